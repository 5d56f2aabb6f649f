package transfer_test

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ferrysync/ferry/internal/fstree"
	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
	"github.com/ferrysync/ferry/pkg/transfer/sender"
)

// TestFidelity pushes the full fixture with Ferry's client to Ferry's
// endpoint, then changes and deletions, and compares the trees after each.
func TestFidelity(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "fidelity")
	src, dst := fixture(t), t.TempDir()
	var ev events
	_, port := serve(t, k, dst, &ev)

	var progress []sender.Progress
	res, err := push(t, k.src, port, src, func(o *sender.Options) {
		o.Progress = func(p sender.Progress) { progress = append(progress, p) }
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

// TestUnprivilegedDestination: without the privileged-movers permission, a
// sync keeps content, modes and times, but owners become the receiver's (and
// no devices would be made).
func TestUnprivilegedDestination(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "unprivileged")
	src, dst := fixture(t), t.TempDir()
	srv := endpoint.New(t.TempDir())
	t.Cleanup(srv.Close)
	addr, err := srv.Add(endpoint.Destination{ID: "u", Keys: k.dst, Volume: dst, ListenAddr: "127.0.0.1:0"})
	require.NoError(t, err)
	res, err := push(t, k.src, addr.(*net.TCPAddr).Port, src, nil)
	require.NoError(t, err, res.Errors)

	want, err := fstree.Snapshot(src)
	require.NoError(t, err)
	got, err := fstree.Snapshot(dst)
	require.NoError(t, err)
	for p, w := range want {
		g, ok := got[p]
		if !assert.True(t, ok, p) {
			continue
		}
		assert.Equal(t, w.SHA256, g.SHA256, p)
		assert.Equal(t, w.Target, g.Target, p)
		assert.Equal(t, w.Type, g.Type, p)
		assert.Equal(t, uint32(endpoint.DefaultRunAs.UID), g.UID, "%s: owned by the receiver's ordinary user", p)
		if w.Type == "file" {
			assert.Equal(t, w.MTimeNS, g.MTimeNS, p)
			assert.Equal(t, w.Mode&0o777, g.Mode&0o777, p)
		}
	}
}

// TestRewriteInTheSameSecond: a file rewritten with the same size within
// the second of its last synced version (an application writing just after
// a one-minute schedule's snapshot) is sent. rsync's quick check compares
// whole seconds unless told otherwise, and would leave the old data in the
// replica while reporting success; through the skip of unchanged trees it
// would stay there for good.
func TestRewriteInTheSameSecond(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "samesecond")
	src, dst := t.TempDir(), t.TempDir()
	var ev events
	_, port := serve(t, k, dst, &ev)
	file := filepath.Join(src, "db")
	second := time.Now().Truncate(time.Second).Add(-time.Hour)
	write := func(data string, at time.Duration) {
		require.NoError(t, os.WriteFile(file, []byte(data), 0o644))
		require.NoError(t, os.Chtimes(file, second.Add(at), second.Add(at)))
	}
	write("version one", 100*time.Millisecond)
	record := &sender.Record{}
	res, err := push(t, k.src, port, src, func(o *sender.Options) { o.Record = record })
	require.NoError(t, err, res.Errors)
	requireSame(t, src, dst)

	write("version two", 600*time.Millisecond)
	res, err = push(t, k.src, port, src, func(o *sender.Options) { o.Record = record })
	require.NoError(t, err, res.Errors)
	requireSame(t, src, dst)
	res, err = push(t, k.src, port, src, func(o *sender.Options) { o.Full = true })
	require.NoError(t, err, res.Errors)
	requireSame(t, src, dst)
}
