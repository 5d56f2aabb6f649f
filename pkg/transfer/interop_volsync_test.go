package transfer_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ferrysync/ferry/internal/fstree"
	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
)

// TestVolSyncSourceToFerryEndpoint acts exactly like VolSync's rsync source
// (stock OpenSSH and rsync, its flags, then `ssh ... shutdown 0`) against
// Ferry's endpoint.
func TestVolSyncSourceToFerryEndpoint(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "volsync-interop")
	src, dst := fixture(t), t.TempDir()
	var ev events
	_, port := serve(t, k, dst, &ev)
	s := volsyncSource(t, k, port)
	vsRsync(t, s, src)
	_, err := s.Shutdown(context.Background(), 0)
	require.NoError(t, err)
	requireSame(t, src, dst)
	assert.Equal(t, 0, ev.waitFor(t, endpoint.SyncEnded).ExitCode)

	require.NoError(t, fstree.Change(src))
	vsRsync(t, s, src)
	requireSame(t, src, dst)
}
