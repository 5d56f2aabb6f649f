package transfer_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
	"github.com/ferrysync/ferry/pkg/transfer/internal/fstree"
	"github.com/ferrysync/ferry/pkg/transfer/source"
)

// TestFidelity pushes the full fixture with Ferry's client to Ferry's
// endpoint, then changes and deletions, and compares the trees after each.
func TestFidelity(t *testing.T) {
	needRoot(t)
	k := keys(t, "fidelity")
	src, dst := fixture(t), t.TempDir()
	var ev events
	_, port := serve(t, k, dst, &ev)

	var progress []source.Progress
	res, err := push(t, k.src, port, src, func(o *source.Options) {
		o.Progress = func(p source.Progress) { progress = append(progress, p) }
		o.ProgressInterval = 1
	})
	require.NoError(t, err, res.Errors)
	requireSame(t, src, dst)
	assert.Equal(t, 0, res.ExitCode)
	assert.GreaterOrEqual(t, res.FilesTransferred, int64(10))
	assert.Greater(t, res.BytesSent, int64(8<<20), "the big file's bytes")
	assert.Contains(t, res.Summary, "Number of files:")
	require.NotEmpty(t, progress)
	assert.Greater(t, progress[len(progress)-1].BytesDone, int64(0))
	assert.Equal(t, 0, ev.waitFor(t, endpoint.RsyncEnded).ExitCode)
	assert.Equal(t, 0, ev.waitFor(t, endpoint.SyncEnded).ExitCode)

	require.NoError(t, fstree.Change(src))
	res, err = push(t, k.src, port, src, nil)
	require.NoError(t, err, res.Errors)
	requireSame(t, src, dst)
	assert.Greater(t, res.FilesDeleted, int64(0))
	assert.Less(t, res.BytesSent, int64(1<<20), "an edit of a big file sends the delta, not the file")
}
