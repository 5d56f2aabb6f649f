package transfer_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
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

// TestPushRetriesThenGivesUp: with nobody listening, every try fails and
// Push reports how many it made.
func TestPushRetriesThenGivesUp(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "retry")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close())
	res, err := sender.Push(context.Background(), sender.Options{Address: "127.0.0.1", Port: port, Keys: k.src, Scratch: t.TempDir(),
		Volume: t.TempDir(), Attempts: 3, Backoff: 10 * time.Millisecond, Log: testr.New(t)})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "connection refused")
	assert.Equal(t, 3, res.Attempts)
	assert.NotEqual(t, 0, res.ExitCode)
}

// TestPushCancels: cancelling the context mid-transfer stops rsync and
// returns the context's error, leaving no rsync behind.
func TestPushCancels(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "cancel")
	src, dst := t.TempDir(), t.TempDir()
	writeRandomFiles(t, src, 4, 256<<20)
	var ev events
	_, port := serve(t, k, dst, &ev)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := sender.Push(ctx, sender.Options{Address: "127.0.0.1", Port: port, Keys: k.src, Volume: src, Scratch: t.TempDir(),
			ProgressInterval: time.Millisecond, Progress: func(p sender.Progress) {
				if p.BytesDone > 0 {
					select {
					case <-started:
					default:
						close(started)
					}
				}
			}})
		done <- err
	}()
	select {
	case <-started:
	case <-time.After(60 * time.Second):
		t.Fatal("transfer did not start")
	}
	cancel()
	select {
	case err := <-done:
		assert.True(t, errors.Is(err, context.Canceled), "got %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("Push did not return after cancel")
	}
	// The destination's confined rsync ends when its connection does.
	ev.waitFor(t, "RsyncEnded")
	assert.Empty(t, testenv.Processes(t, "rsync", src), "no rsync of this transfer may remain")
	_ = os.RemoveAll(src)
}

// TestHoldRefusesTransfers: a held destination refuses rsync (the push
// fails and the destination reports the refusal) but still answers
// shutdown; released, the same push succeeds.
func TestHoldRefusesTransfers(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "hold")
	src, dst := t.TempDir(), t.TempDir()
	require.NoError(t, os.WriteFile(src+"/f", []byte("after the snapshot"), 0o644))
	var ev events
	srv, port := serve(t, k, dst, &ev)
	srv.Hold("ns/dest", true)
	_, err := push(t, k.src, port, src, nil)
	require.Error(t, err)
	assert.Contains(t, ev.waitFor(t, endpoint.Refused).Message, "held")
	assert.NoFileExists(t, dst+"/f")

	srv.Hold("ns/dest", false)
	_, err = push(t, k.src, port, src, nil)
	require.NoError(t, err)
	assert.FileExists(t, dst+"/f")
}

// TestFailedIncrementalTryRetriesInFull: when a try of an incremental
// sync fails, the next one sends the whole tree (the list may be what
// failed), and the sync still ends with the replica equal to the source;
// the sync after it is incremental again.
func TestFailedIncrementalTryRetriesInFull(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "retryfull")
	src, dst := fixture(t), t.TempDir()
	var ev events
	srv, port := serve(t, k, dst, &ev)
	record := &sender.Record{}
	withRecord := func(o *sender.Options) { o.Record = record }
	_, err := push(t, k.src, port, src, withRecord)
	require.NoError(t, err)
	ev.waitForCount(t, endpoint.Recorded, 1)

	require.NoError(t, os.WriteFile(filepath.Join(src, "a", "new"), []byte("changed"), 0o644))
	srv.Hold("ns/dest", true) // the first try is refused
	done := make(chan sender.Result, 1)
	go func() {
		res, err := push(t, k.src, port, src, func(o *sender.Options) {
			o.Record, o.Attempts, o.Backoff = record, 2, time.Second
		})
		assert.NoError(t, err)
		done <- res
	}()
	ev.waitFor(t, endpoint.Refused)
	srv.Hold("ns/dest", false)
	res := <-done
	assert.Equal(t, 2, res.Attempts)
	assert.Zero(t, res.Listed, "the second try sent the whole tree")
	assert.NotContains(t, res.Summary, sender.IncrementalSummary)
	requireSame(t, src, dst)

	ev.waitForCount(t, endpoint.Recorded, 2)
	require.NoError(t, os.WriteFile(filepath.Join(src, "a", "new"), []byte("changed again"), 0o644))
	res, err = push(t, k.src, port, src, withRecord)
	require.NoError(t, err)
	assert.Positive(t, res.Listed, "the completed sync left a record: incremental again")
	requireSame(t, src, dst)
}

// TestShutdownHoldsAtOnce: a destination that holds on shutdown refuses the
// next rsync as soon as `shutdown 0` is answered, before whoever lifts holds
// has heard of the sync (its events wait here, blocked, meanwhile), and says
// the shutdown is not delivered yet.
func TestShutdownHoldsAtOnce(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "holdonshutdown")
	src, dst := t.TempDir(), t.TempDir()
	require.NoError(t, os.WriteFile(src+"/f", []byte("first sync"), 0o644))
	release := make(chan struct{})
	srv := endpoint.New(t.TempDir(), endpoint.WithLogger(testr.New(t)))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs first: unblocks delivery for Close
	addr, err := srv.Add(endpoint.Destination{ID: "ns/dest", Keys: k.dst, Volume: dst, Privileged: true,
		ListenAddr: "127.0.0.1:0", HoldOnShutdown: true, Events: func(e endpoint.Event) {
			if e.Kind == endpoint.SyncEnded {
				<-release // a receiver far behind
			}
		}})
	require.NoError(t, err)
	port := addr.(*net.TCPAddr).Port
	_, err = push(t, k.src, port, src, nil)
	require.NoError(t, err, "the first sync and its shutdown 0")
	assert.True(t, srv.Ending("ns/dest"), "the shutdown is not delivered yet")
	require.NoError(t, os.WriteFile(src+"/f", []byte("written after the sync ended"), 0o644))
	_, err = push(t, k.src, port, src, nil)
	require.Error(t, err, "held from the shutdown on")
	got, err := os.ReadFile(dst + "/f")
	require.NoError(t, err)
	assert.Equal(t, "first sync", string(got))
}

// TestShutdownEndsLiveTransfers: a source starts a transfer on one session
// that never finishes (as a slow or hostile writer would) and says
// `shutdown 0` on another. The destination ends that transfer before it
// reports the sync, reports the sync failed, and does not hold: nothing
// writes once a sync is said to be over, and latestImage never names it.
func TestShutdownEndsLiveTransfers(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "shutdownlive")
	dst := t.TempDir()
	var ev events
	srv := endpoint.New(t.TempDir(), endpoint.WithLogger(testr.New(t)))
	t.Cleanup(srv.Close)
	addr, err := srv.Add(endpoint.Destination{ID: "ns/dest", Keys: k.dst, Volume: dst, Privileged: true,
		ListenAddr: "127.0.0.1:0", HoldOnShutdown: true, Events: ev.add})
	require.NoError(t, err)
	port := addr.(*net.TCPAddr).Port

	sess := stalledReceiver(t, port, k, &ev)

	ender, err := dial(t, port, k.src.Identity, k.src.HostKey)
	require.NoError(t, err)
	defer ender.Close()
	reply, code := execute(t, ender, "shutdown 0")
	assert.NotZero(t, code, "the source hears that the destination does not count the sync")
	assert.Contains(t, reply, "still wrote when the source ended the sync")
	ended := ev.waitFor(t, endpoint.SyncEnded)
	assert.NotEqual(t, 0, ended.ExitCode, "a sync cut short is not reported complete")
	assert.Contains(t, ended.Message, "still wrote when the source ended the sync")
	ev.mu.Lock()
	var order []endpoint.EventKind
	for _, e := range ev.all {
		order = append(order, e.Kind)
	}
	ev.mu.Unlock()
	assert.Equal(t, []endpoint.EventKind{endpoint.RsyncStarted, endpoint.RsyncEnded, endpoint.SyncEnded}, order,
		"the transfer had ended before the sync was reported")
	assert.Error(t, sess.Wait(), "the writer's transfer was stopped")
}

// stalledReceiver starts a transfer on the destination at port whose client
// never sends its file list, as a slow or hostile writer would, and returns
// its session once the destination reports the receiver started.
func stalledReceiver(t *testing.T, port int, k *keyset, ev *events) *ssh.Session {
	t.Helper()
	writer, err := dial(t, port, k.src.Identity, k.src.HostKey)
	require.NoError(t, err)
	t.Cleanup(func() { writer.Close() })
	sess, err := writer.NewSession()
	require.NoError(t, err)
	stdin, err := sess.StdinPipe() // held open: the transfer waits for data
	require.NoError(t, err)
	t.Cleanup(func() { stdin.Close(); sess.Close() })
	require.NoError(t, sess.Start("rsync --server -logDtpre.iLsfxCIvu . ."))
	ev.waitFor(t, endpoint.RsyncStarted)
	return sess
}

// TestNewTryEndsTheLastOnesReceiver: a receiver of an earlier try still runs
// (its source lost the connection, or hangs) when the source's next try
// asks for a transfer. The destination ends the old receiver first, so two
// receivers never write the same volume, and the new try completes.
func TestNewTryEndsTheLastOnesReceiver(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "newtry")
	dst := t.TempDir()
	var ev events
	srv := endpoint.New(t.TempDir(), endpoint.WithLogger(testr.New(t)))
	t.Cleanup(srv.Close)
	addr, err := srv.Add(endpoint.Destination{ID: "ns/dest", Keys: k.dst, Volume: dst, Privileged: true,
		ListenAddr: "127.0.0.1:0", Events: ev.add})
	require.NoError(t, err)
	port := addr.(*net.TCPAddr).Port
	old := stalledReceiver(t, port, k, &ev)

	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "f"), []byte("the new try"), 0o644))
	res, err := push(t, k.src, port, src, nil)
	require.NoError(t, err, "the new try completes: %s", res.Errors)
	assert.Equal(t, 0, res.ExitCode)
	requireSame(t, src, dst)
	ended := make(chan error, 1)
	go func() { ended <- old.Wait() }()
	select {
	case err := <-ended:
		assert.Error(t, err, "the old try's receiver was ended")
	case <-time.After(30 * time.Second):
		t.Fatal("the old try's receiver still runs after the new try completed")
	}
}
