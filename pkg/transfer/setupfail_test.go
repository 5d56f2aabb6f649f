package transfer_test

import (
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/ssh"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
	"github.com/ferrysync/ferry/pkg/transfer/sender"
	"github.com/ferrysync/ferry/pkg/transfer/treedigest"
)

// TestFailedSetUpIsNoSync: a push whose own set-up fails before rsync
// starts (here the confinement is refused: no scratch directory; a full
// /tmp, a cgroup or pids limit, a failed exec take the same path) is a
// failed sync on both ends: the source says so with a non-zero shutdown,
// the destination reports the sync failed and records nothing, and the
// next push of the same tree sends it instead of being skipped as
// unchanged over an empty replica.
func TestFailedSetUpIsNoSync(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "setupfail")
	src, dst := fixture(t), t.TempDir()
	var ev events
	_, port := serve(t, k, dst, &ev)
	record := &sender.Record{}

	res, err := push(t, k.src, port, src, func(o *sender.Options) { o.Scratch, o.Record = "", record })
	require.Error(t, err, "confine refuses an empty scratch directory")
	assert.NotZero(t, res.ExitCode, "no rsync ran to 0")
	ended := ev.waitFor(t, endpoint.SyncEnded)
	assert.NotZero(t, ended.ExitCode, "the destination heard of a failed sync")
	assert.Zero(t, ev.count(endpoint.Recorded), "nothing recorded of a sync that sent nothing")

	res, err = push(t, k.src, port, src, func(o *sender.Options) { o.Record = record })
	require.NoError(t, err, res.Errors)
	assert.False(t, res.Unchanged, "the replica never received the tree")
	requireSame(t, src, dst)
}

// TestShutdownWithoutTransferIsNoSync: a source that is not Ferry's (or a
// broken one) offers its tree's digest, runs no rsync, and says
// `shutdown 0`. The destination does not take its word: the sync is
// reported failed, nothing is recorded or held, and a later offer of the
// same digest is not skipped; the source hears why.
func TestShutdownWithoutTransferIsNoSync(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "shutdownonly")
	src, dst := fixture(t), t.TempDir()
	var ev events
	srv := endpoint.New(t.TempDir())
	t.Cleanup(srv.Close)
	addr, err := srv.Add(endpoint.Destination{ID: "ns/dest", Keys: k.dst, Volume: dst, Privileged: true,
		ListenAddr: "127.0.0.1:0", HoldOnShutdown: true, Events: ev.add})
	require.NoError(t, err)
	port := portOf(addr)

	c, err := dial(t, port, k.src.Identity, k.src.HostKey)
	require.NoError(t, err)
	defer c.Close()
	offerDigest(t, c, src)
	reply, code := execute(t, c, "shutdown 0")
	assert.NotZero(t, code, "the source hears that the destination does not count the sync")
	assert.Contains(t, reply, "no transfer")
	ended := ev.waitFor(t, endpoint.SyncEnded)
	assert.NotZero(t, ended.ExitCode, "no transfer completed in this sync")
	assert.Contains(t, ended.Message, "no transfer")
	assert.Zero(t, ev.count(endpoint.Recorded))

	res, err := push(t, k.src, port, src, nil)
	require.NoError(t, err, "not held: the sync did not complete")
	assert.False(t, res.Unchanged)
	requireSame(t, src, dst)
}

// portOf is the port of a destination's listener.
func portOf(addr net.Addr) int { return addr.(*net.TCPAddr).Port }

// offerDigest offers the digest of the tree under root, as Ferry's source
// does before a sync, and returns whether the destination calls it
// unchanged.
func offerDigest(t testing.TB, c *ssh.Client, root string) bool {
	t.Helper()
	sum, err := treedigest.Of(t.Context(), root)
	require.NoError(t, err)
	ok, _, err := c.SendRequest(treedigest.Request, true, sum[:])
	require.NoError(t, err)
	return ok
}
