package endpoint

import (
	"errors"
	"os/exec"
	"sync"
	"time"
)

// transfer is one rsync receiver of a destination, from the moment it is
// admitted until its process has exited or it was stopped before it began.
type transfer struct {
	// mu makes starting the process and stopping the transfer exclusive:
	// a stop either comes first (and the process never starts) or sees the
	// process and kills it.
	mu      sync.Mutex
	cmd     *exec.Cmd
	stopped bool
	// done is closed once the transfer is over (see release).
	done chan struct{}
}

// errStopped says a transfer was stopped before its rsync started: the
// sync it would have joined has ended.
var errStopped = errors.New("the sync ended before this transfer started")

// start starts cmd unless the transfer was stopped first.
func (t *transfer) start(cmd *exec.Cmd) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return errStopped
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	t.cmd = cmd
	return nil
}

// stop ends the transfer: its process is killed, or never starts.
func (t *transfer) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stopped = true
	if t.cmd != nil {
		_ = t.cmd.Process.Kill()
	}
}

// refusedHeld is admit's refusal of a held destination; its other is
// RefusedDestinationTransfers.
const refusedHeld = "held"

// admit registers a new transfer unless the destination is held or holds
// perDestination transfers already (0: no limit); refused, it returns nil
// and which of the two refused it. Checking the hold and registering are one step under runMu,
// and a shutdown takes the hold before it looks at the running transfers
// under the same lock, so each transfer is either seen by the shutdown
// (and ended before the sync is reported) or sees the hold (and is
// refused): none starts writing after a sync was said to be over.
func (l *listener) admit(perDestination int) (*transfer, string) {
	l.runMu.Lock()
	defer l.runMu.Unlock()
	if l.held.Load() {
		return nil, refusedHeld
	}
	if perDestination > 0 && len(l.running) >= perDestination {
		return nil, RefusedDestinationTransfers
	}
	t := &transfer{done: make(chan struct{})}
	if l.running == nil {
		l.running = map[*transfer]struct{}{}
	}
	l.running[t] = struct{}{}
	return t, ""
}

// release says t is over: its process has exited (and its RsyncEnded is
// queued), or it never started.
func (l *listener) release(t *transfer) {
	l.runMu.Lock()
	delete(l.running, t)
	l.runMu.Unlock()
	close(t.done)
}

// endRunning waits up to grace for the destination's transfers to end (one
// whose client has just finished may still be exiting), stops those still
// running or starting, waits until they are over, and returns how many it
// stopped.
func (l *listener) endRunning(grace time.Duration) int {
	l.runMu.Lock()
	running := make([]*transfer, 0, len(l.running))
	for t := range l.running {
		running = append(running, t)
	}
	l.runMu.Unlock()
	expired := make(chan struct{})
	timer := time.AfterFunc(grace, func() { close(expired) })
	defer timer.Stop()
	stopped := 0
	for _, t := range running {
		select {
		case <-t.done:
			continue
		case <-expired:
		}
		t.stop()
		stopped++
		<-t.done
	}
	return stopped
}
