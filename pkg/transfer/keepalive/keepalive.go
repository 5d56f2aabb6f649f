// Package keepalive ends an ssh connection whose peer has stopped
// answering. A network cut mid-transfer (a failed link, a node gone, a
// firewall that drops rather than refuses) sends no reset: without this,
// the sender blocks until TCP gives up after many minutes, and a receiver
// waiting for data never notices, holding its transfer slot and the
// volume. Both ends of a Ferry transfer watch their connection, as
// OpenSSH's ServerAliveInterval and ClientAliveInterval do.
package keepalive

import (
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// DefaultInterval is how often each end asks by default: a cut is noticed
// within a minute.
const DefaultInterval = 15 * time.Second

// Missed is how many intervals may pass without an answer before the
// connection is closed (OpenSSH's ServerAliveCountMax default, less one).
const Missed = 3

// request is OpenSSH's keepalive global request; every ssh implementation
// answers it, if only with a failure, and any answer shows the peer alive.
const request = "keepalive@openssh.com"

// Watcher watches one connection (Watch).
type Watcher struct {
	last atomic.Int64 // unix nanoseconds of the last answer
	busy atomic.Int32
}

// Busy holds the count of missed answers until done is called: ssh has
// one global request of a side outstanding at a time, so a keepalive
// waits behind a long request of this side's own (the digest offer, which
// the destination answers only once it has summed its volume) without the
// peer being gone.
func (w *Watcher) Busy() (done func()) {
	w.busy.Add(1)
	return func() {
		w.last.Store(time.Now().UnixNano())
		w.busy.Add(-1)
	}
}

// Watch asks the peer of conn for an answer every interval and closes conn
// when Missed intervals have passed without one (while not Busy). It
// watches until conn is closed, by it or by anyone; an interval of zero
// or less watches nothing.
func Watch(conn ssh.Conn, interval time.Duration) *Watcher {
	w := &Watcher{}
	w.last.Store(time.Now().UnixNano())
	if interval > 0 {
		go w.watch(conn, interval)
	}
	return w
}

func (w *Watcher) watch(conn ssh.Conn, interval time.Duration) {
	closed := make(chan struct{})
	go func() { _ = conn.Wait(); close(closed) }()
	var asking atomic.Bool
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-closed:
			return
		case now := <-tick.C:
			if w.busy.Load() == 0 && now.Sub(time.Unix(0, w.last.Load())) > time.Duration(Missed)*interval {
				_ = conn.Close()
				return
			}
			// One request at a time: ssh waits for each answer in turn.
			// It has no deadline of its own: a peer that never answers
			// is closed above, Missed intervals on, and that ends it.
			if asking.CompareAndSwap(false, true) {
				go func() {
					defer asking.Store(false)
					if _, _, err := conn.SendRequest(request, true, nil); err == nil {
						w.last.Store(time.Now().UnixNano())
					}
				}()
			}
		}
	}
}
