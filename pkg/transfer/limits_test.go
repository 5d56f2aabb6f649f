package transfer_test

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/ssh"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
	"github.com/ferrysync/ferry/pkg/transfer/sender"
)

// refusals counts an endpoint's refusals by cause.
type refusals struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *refusals) add(cause string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[string]int{}
	}
	r.n[cause]++
}

func (r *refusals) get(cause string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[cause]
}

// TestFloodLeavesOthersServed: 500 parallel handshakes against destination
// A (each would cost the node an RSA signature), then 100 channels on one
// connection to A, while destination B's source syncs. The excess is
// refused at once and counted, B's syncs succeed, and A serves its own
// source afterwards.
func TestFloodLeavesOthersServed(t *testing.T) {
	testenv.NeedRoot(t)
	a, b, stranger := keys(t, "dest-a"), keys(t, "dest-b"), keys(t, "stranger")
	var refused refusals
	srv := endpoint.New(t.TempDir(), endpoint.WithLogger(testr.New(t)), endpoint.WithRefusals(refused.add))
	t.Cleanup(srv.Close)
	dstA, dstB := t.TempDir(), t.TempDir()
	addrA, err := srv.Add(endpoint.Destination{ID: "a", Keys: a.dst, Volume: dstA, Privileged: true, ListenAddr: "127.0.0.1:0"})
	require.NoError(t, err)
	addrB, err := srv.Add(endpoint.Destination{ID: "b", Keys: b.dst, Volume: dstB, Privileged: true, ListenAddr: "127.0.0.1:0"})
	require.NoError(t, err)
	portA, portB := addrA.(*net.TCPAddr).Port, addrB.(*net.TCPAddr).Port
	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "f"), []byte("data"), 0o644))

	var flood sync.WaitGroup
	for range 500 {
		flood.Add(1)
		go func() {
			defer flood.Done()
			if c, err := dial(t, portA, stranger.src.Identity, a.dst.HostKey.PublicKey()); err == nil {
				c.Close()
				t.Error("a stranger's key was let in")
			}
		}()
	}
	res, err := push(t, b.src, portB, src, nil)
	require.NoError(t, err, "B syncs during the flood: %s", res.Errors)
	flood.Wait()
	assert.Greater(t, refused.get(endpoint.RefusedHandshakes)+refused.get(endpoint.RefusedPeer), 400,
		"most of the flood is refused before any signature")

	// One connection with A's own key, once the flood's rate has passed.
	var c *ssh.Client
	testenv.Eventually(t, "A to let its source in again", 10*time.Second, func() bool {
		c, err = dial(t, portA, a.src.Identity, a.dst.HostKey.PublicKey())
		return err == nil
	})
	defer c.Close()
	var sessions []*ssh.Session
	rejected := 0
	for range 100 {
		s, err := c.NewSession()
		switch {
		case err == nil:
			sessions = append(sessions, s)
		case strings.Contains(err.Error(), "resource shortage"):
			rejected++
		default:
			t.Logf("channel: %v", err)
		}
	}
	assert.Len(t, sessions, endpoint.DefaultLimits.Channels, "channels open at once on one connection")
	assert.Greater(t, rejected, 90, "the rest are refused for want of resources")
	assert.Equal(t, rejected, refused.get(endpoint.RefusedChannels), "and counted")
	res, err = push(t, b.src, portB, src, nil)
	require.NoError(t, err, "B syncs while A's connection holds its channels: %s", res.Errors)
	for _, s := range sessions {
		s.Close()
	}
	// A source retries a refused connection, as this one does: the flood
	// may have spent A's handshake budget for the moment.
	res, err = push(t, a.src, portA, src, func(o *sender.Options) { o.Attempts, o.Backoff = 5, 200*time.Millisecond })
	require.NoError(t, err, "A serves its own source afterwards: %s", res.Errors)
	assert.FileExists(t, filepath.Join(dstA, "f"))
}

// TestTransfersPerNodeAreBounded: past the node's limit of rsync receivers
// a new transfer, to another destination on the same node, is refused with a
// message that says so. (A new transfer to the same destination ends that
// destination's earlier one instead: see TestNewTryEndsTheLastOnesReceiver.)
func TestTransfersPerNodeAreBounded(t *testing.T) {
	testenv.NeedRoot(t)
	ka, kb := keys(t, "dest-a"), keys(t, "dest-b")
	var refused refusals
	lim := endpoint.DefaultLimits
	lim.Transfers = 1
	srv := endpoint.New(t.TempDir(), endpoint.WithLimits(lim), endpoint.WithRefusals(refused.add))
	t.Cleanup(srv.Close)
	addrA, err := srv.Add(endpoint.Destination{ID: "a", Keys: ka.dst, Volume: t.TempDir(), Privileged: true, ListenAddr: "127.0.0.1:0"})
	require.NoError(t, err)
	addrB, err := srv.Add(endpoint.Destination{ID: "b", Keys: kb.dst, Volume: t.TempDir(), Privileged: true, ListenAddr: "127.0.0.1:0"})
	require.NoError(t, err)
	ca, err := dial(t, addrA.(*net.TCPAddr).Port, ka.src.Identity, ka.dst.HostKey.PublicKey())
	require.NoError(t, err)
	defer ca.Close()
	// A receiver that waits for its client's file list holds the one slot.
	first, err := ca.NewSession()
	require.NoError(t, err)
	defer first.Close()
	stdin, err := first.StdinPipe()
	require.NoError(t, err)
	defer stdin.Close()
	stdout, err := first.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, first.Start("rsync --server -logDtpre.iLsfxCIvu . ."))
	_, err = io.ReadFull(stdout, make([]byte, 4)) // its protocol version: it runs
	require.NoError(t, err)
	cb, err := dial(t, addrB.(*net.TCPAddr).Port, kb.src.Identity, kb.dst.HostKey.PublicKey())
	require.NoError(t, err)
	defer cb.Close()
	stderr, code := execute(t, cb, "rsync --server -logDtpre.iLsfxCIvu . .")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "maximum of 1 transfers")
	assert.Positive(t, refused.get(endpoint.RefusedTransfers))
}

// TestIdleSocketsFromOneAddressLeaveTheSourceServed: from one address
// (127.0.0.2) an attacker keeps 16 TCP connections to a destination open
// without sending a byte of ssh, reopening each as soon as it is closed;
// it has no key. The destination's own source, from another address,
// syncs at its first try all the while; the attacker's sockets are closed
// once their banner time is up, and counted as refusals of a peer past its
// share.
func TestIdleSocketsFromOneAddressLeaveTheSourceServed(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "idle")
	var refused refusals
	dst := t.TempDir()
	lim := endpoint.DefaultLimits
	lim.BannerTimeout = 500 * time.Millisecond
	_, port := serveDestination(t, endpoint.Destination{Keys: k.dst, Volume: dst, Privileged: true}, &events{},
		endpoint.WithLimits(lim), endpoint.WithRefusals(refused.add))
	attacker := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	stop := make(chan struct{})
	var flood sync.WaitGroup
	var closedByServer atomic.Int32
	for range 16 {
		flood.Add(1)
		go func() {
			defer flood.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := attacker.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
				if err != nil {
					continue
				}
				go func() { <-stop; c.Close() }()
				_, _ = io.Copy(io.Discard, c) // silent; returns once the server closes it
				closedByServer.Add(1)
			}
		}()
	}
	defer func() { close(stop); flood.Wait() }()
	testenv.Eventually(t, "the flood to hold its share", 20*time.Second, func() bool { return refused.get(endpoint.RefusedPeer) > 0 })

	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "f"), []byte("served through the flood"), 0o644))
	for i := range 3 {
		res, err := push(t, k.src, port, src, func(o *sender.Options) { o.Attempts = 1 })
		require.NoError(t, err, "sync %d during the flood, at its first try: %s", i, res.Errors)
	}
	requireSame(t, src, dst)
	testenv.Eventually(t, "silent sockets closed by the server", 20*time.Second, func() bool { return closedByServer.Load() > 16 })
}

// TestOneDestinationCannotTakeEveryReceiver: with destination A's key an
// attacker asks for as many receivers as A's connections and channels
// allow (8 × 4), each waiting for a file list that never comes, on a node
// that runs 4 receivers at once. A holds at most its share; destination
// B's source syncs at its first try meanwhile; and A's idle receivers end
// by themselves once the idle timeout has passed.
func TestOneDestinationCannotTakeEveryReceiver(t *testing.T) {
	testenv.NeedRoot(t)
	a, b := keys(t, "greedy"), keys(t, "other")
	var refused refusals
	lim := endpoint.DefaultLimits
	lim.Transfers, lim.IdleTimeout = 4, 3*time.Second
	srv := endpoint.New(t.TempDir(), endpoint.WithLimits(lim), endpoint.WithRefusals(refused.add), endpoint.WithLogger(testr.New(t)))
	t.Cleanup(srv.Close)
	var evA events
	addrA, err := srv.Add(endpoint.Destination{ID: "a", Keys: a.dst, Volume: t.TempDir(), Privileged: true,
		ListenAddr: "127.0.0.1:0", Events: evA.add})
	require.NoError(t, err)
	dstB := t.TempDir()
	addrB, err := srv.Add(endpoint.Destination{ID: "b", Keys: b.dst, Volume: dstB, Privileged: true, ListenAddr: "127.0.0.1:0"})
	require.NoError(t, err)

	const asked = 8 * 4
	for range 8 {
		var c *ssh.Client
		testenv.Eventually(t, "a connection to A", 10*time.Second, func() bool {
			c, err = dial(t, addrA.(*net.TCPAddr).Port, a.src.Identity, a.dst.HostKey.PublicKey())
			return err == nil
		})
		t.Cleanup(func() { c.Close() })
		for range 4 {
			s, err := c.NewSession()
			require.NoError(t, err)
			stdin, err := s.StdinPipe() // held open: the receiver waits for data
			require.NoError(t, err)
			t.Cleanup(func() { stdin.Close(); s.Close() })
			require.NoError(t, s.Start("rsync --server -logDtpre.iLsfxCIvu . ."))
		}
	}
	testenv.Eventually(t, "every one of A's requests answered", 30*time.Second, func() bool {
		return evA.count(endpoint.RsyncStarted)+evA.count(endpoint.Refused) >= asked
	})
	started, ended := evA.count(endpoint.RsyncStarted), evA.count(endpoint.RsyncEnded)
	t.Logf("A: %d receivers started, %d ended, %d refused", started, ended, evA.count(endpoint.Refused))
	assert.LessOrEqual(t, started-ended, lim.TransfersPerDestination, "receivers A holds at once")
	assert.Positive(t, refused.get(endpoint.RefusedDestinationTransfers), "A's excess counted")

	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "f"), []byte("B's data"), 0o644))
	res, err := push(t, b.src, addrB.(*net.TCPAddr).Port, src, func(o *sender.Options) { o.Attempts = 1 })
	require.NoError(t, err, "B syncs at its first try while A holds what it can: %s", res.Errors)
	requireSame(t, src, dstB)

	testenv.Eventually(t, "A's idle receivers to end by themselves", 30*time.Second, func() bool {
		return evA.count(endpoint.RsyncEnded) >= evA.count(endpoint.RsyncStarted)
	})
}
