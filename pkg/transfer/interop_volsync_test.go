package transfer_test

import (
	"strings"
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
	o := newOpenSSH(t, k, port)
	defer o.closeMaster(port)
	rsh := "ssh " + strings.Join(o.sshArgs(port), " ")
	volsyncRsync := func() {
		_, err := runLogged(t, "rsync", "-aAhHSxz", "--delete", "--itemize-changes", "--info=stats2,misc2",
			"-e", rsh, src+"/", "root@127.0.0.1:.")
		require.NoError(t, err)
	}
	volsyncRsync()
	_, err := runLogged(t, "ssh", append(o.sshArgs(port), "root@127.0.0.1", "shutdown", "0")...)
	require.NoError(t, err)
	requireSame(t, src, dst)
	assert.Equal(t, 0, ev.waitFor(t, endpoint.SyncEnded).ExitCode)

	require.NoError(t, fstree.Change(src))
	volsyncRsync()
	requireSame(t, src, dst)
}
