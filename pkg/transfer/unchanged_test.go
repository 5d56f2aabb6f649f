package transfer_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
	"github.com/ferrysync/ferry/pkg/transfer/sender"
)

// TestUnchangedTreeSendsNothing: a Ferry source whose tree is as it was
// at the last completed sync, into a destination unchanged since, sends
// nothing (no rsync runs) and ends the sync with shutdown 0; every break in
// that chain runs rsync in full: a change in the source (even one rsync's
// quick check would not see: same size and mtime), a change made on the
// destination behind Ferry's back (also the moment a sync is over), a sync of VolSync's source in between, a
// sync asked to run in full. The replica is the source's every time.
func TestUnchangedTreeSendsNothing(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "unchanged")
	src, dst := fixture(t), t.TempDir()
	var ev events
	_, port := serve(t, k, dst, &ev)
	sync := func(want bool, why string, mod ...func(*sender.Options)) {
		t.Helper()
		var m func(*sender.Options)
		if len(mod) > 0 {
			m = mod[0]
		}
		recorded := ev.count(endpoint.Recorded)
		res, err := push(t, k.src, port, src, m)
		require.NoError(t, err, res.Errors)
		if !res.Unchanged && (m == nil) {
			// Summed before the source heard the sync ended (events are
			// delivered on their own goroutine).
			ev.waitForCount(t, endpoint.Recorded, recorded+1)
		}
		assert.Equal(t, want, res.Unchanged, why)
		if want {
			assert.Zero(t, res.Attempts, "no rsync ran")
			assert.Zero(t, res.BytesSent)
		}
		requireSame(t, src, dst)
	}
	sync(false, "the first sync runs in full")
	sync(true, "nothing changed")
	sync(true, "still nothing")

	p := filepath.Join(src, "big.bin")
	st, err := os.Stat(p)
	require.NoError(t, err)
	data, err := os.ReadFile(p)
	require.NoError(t, err)
	data[0] ^= 0xff
	require.NoError(t, os.WriteFile(p, data, st.Mode()))
	require.NoError(t, os.Chtimes(p, st.ModTime(), st.ModTime()))
	// Not skipped; rsync's own quick check (size and mtime) then leaves the
	// replica's data as it was, as any full rsync would.
	recorded := ev.count(endpoint.Recorded)
	res, err := push(t, k.src, port, src, nil)
	require.NoError(t, err, res.Errors)
	assert.False(t, res.Unchanged, "a rewrite keeping size and mtime changes the tree's digest")
	ev.waitForCount(t, endpoint.Recorded, recorded+1)
	later := st.ModTime().Add(time.Minute)
	require.NoError(t, os.Chtimes(p, later, later))
	sync(false, "the rewrite, now with its own mtime")
	sync(true, "and then nothing")

	require.NoError(t, os.Chmod(filepath.Join(src, "a"), 0o700))
	sync(false, "a mode changed in the source")

	require.NoError(t, os.WriteFile(filepath.Join(dst, "planted"), []byte("x"), 0o644))
	sync(false, "the destination changed behind Ferry's back")
	sync(true, "unchanged again on both ends")

	// A change to the replica the moment the sync is over (a pod mounting
	// it, a restore into it) comes after the destination's sum, never
	// into it.
	require.NoError(t, os.Chmod(filepath.Join(src, "a"), 0o750))
	res, err = push(t, k.src, port, src, nil)
	require.NoError(t, err, res.Errors)
	require.NoError(t, os.RemoveAll(filepath.Join(dst, "a")))
	sync(false, "the destination changed right after the sync")
	ev.mu.Lock()
	var order []endpoint.EventKind
	for _, e := range ev.all {
		if e.Kind == endpoint.Recorded || e.Kind == endpoint.SyncEnded {
			order = append(order, e.Kind)
		}
	}
	ev.mu.Unlock()
	require.Equal(t, []endpoint.EventKind{endpoint.Recorded, endpoint.SyncEnded}, order[len(order)-2:],
		"the volume is summed before the sync is said to be over, whatever its size")

	vs := volsyncSource(t, k, port)
	vsRsync(t, vs, src)
	sync(false, "VolSync's source synced in between: no record")
	sync(false, "a sync asked to run in full", func(o *sender.Options) { o.Full = true })
	sync(false, "which leaves no record either")
	sync(true, "until a Ferry sync completes")
}
