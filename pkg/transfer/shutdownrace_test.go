//go:build ferryfault

package transfer_test

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
	"github.com/ferrysync/ferry/pkg/transfer/internal/fault"
)

// windowInjector stops one transfer request, once armed, just after it
// found the destination not held — the window in which a shutdown used to
// report the sync complete and hold, after which the request went on to
// start its receiver — and lets it go on once the sync was reported, or
// after a while if it is not.
type windowInjector struct {
	armed    atomic.Bool
	inWindow chan struct{}
	reported func() bool
}

func (w *windowInjector) At(p fault.Point) error {
	if p != fault.ReceiverAdmit || !w.armed.CompareAndSwap(true, false) {
		return nil
	}
	w.inWindow <- struct{}{}
	// A bounded look for something that must not happen, not a wait.
	for deadline := time.Now().Add(500 * time.Millisecond); time.Now().Before(deadline) && !w.reported(); {
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

func (w *windowInjector) Started(fault.Point, int) {}

// TestShutdownRacesAStartingTransfer: round after round, a sync's transfer
// completes (VolSync's source: stock rsync over ssh); then the source asks
// for another transfer on one session and, while that request has just
// found the destination not held, says `shutdown 0` on another. The
// destination must not report the sync complete and hold while a transfer
// is on its way in: the late receiver either never starts or has ended
// before the sync is reported (which is then not complete). Never a
// RsyncStarted after a SyncEnded of 0, which would be a write into the
// replica its snapshot is being cut from.
func TestShutdownRacesAStartingTransfer(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "shutdownrace")
	src := fixture(t)
	var ev events
	srv, port := serveDestination(t, endpoint.Destination{Keys: k.dst, Volume: t.TempDir(), Privileged: true,
		HoldOnShutdown: true}, &ev)
	var first atomic.Int64
	inj := &windowInjector{inWindow: make(chan struct{}), reported: func() bool {
		return slices.Contains(kinds(ev.snapshot()[first.Load():]), endpoint.SyncEnded)
	}}
	t.Cleanup(fault.Set(inj))
	vs := volsyncSource(t, k, port)
	writer, err := dial(t, port, k.src.Identity, k.src.HostKey)
	require.NoError(t, err)
	defer writer.Close()
	ender, err := dial(t, port, k.src.Identity, k.src.HostKey)
	require.NoError(t, err)
	defer ender.Close()
	for round := range 8 {
		vsRsync(t, vs, src)
		first.Store(int64(len(ev.snapshot())))
		inj.armed.Store(true)
		late, err := writer.NewSession()
		require.NoError(t, err)
		late.Stdin = strings.NewReader("") // the receiver sees its client end at once
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = late.Run("rsync --server -logDtpre.iLsfxCIvu . .")
		}()
		select {
		case <-inj.inWindow:
		case <-time.After(20 * time.Second):
			t.Fatalf("round %d: the late transfer request never came", round)
		}
		_, _ = execute(t, ender, "shutdown 0")
		wg.Wait()
		late.Close()
		testenv.Eventually(t, "the round's events delivered", 20*time.Second, func() bool {
			return !srv.Ending("ns/dest") && inj.reported()
		})
		got := ev.snapshot()[first.Load():]
		at := slices.Index(kinds(got), endpoint.SyncEnded)
		require.False(t, got[at].ExitCode == 0 && slices.Contains(kinds(got[at+1:]), endpoint.RsyncStarted),
			"round %d: a receiver started after the sync was reported complete and held: %v", round, kinds(got))
		srv.Hold("ns/dest", false)
	}
}

// snapshot is a copy of the events so far.
func (e *events) snapshot() []endpoint.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.all)
}

// kinds are the kinds of events, in order.
func kinds(events []endpoint.Event) []endpoint.EventKind {
	out := make([]endpoint.EventKind, len(events))
	for i, e := range events {
		out[i] = e.Kind
	}
	return out
}
