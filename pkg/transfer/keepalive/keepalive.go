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

// Watch asks the peer of conn for an answer every interval and closes conn
// when Missed intervals have passed without one. It returns when conn is
// closed, by it or by anyone; an interval of zero or less watches nothing.
func Watch(conn ssh.Conn, interval time.Duration) {
	if interval <= 0 {
		return
	}
	var last atomic.Int64 // unix nanoseconds of the last answer
	last.Store(time.Now().UnixNano())
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
			if now.Sub(time.Unix(0, last.Load())) > time.Duration(Missed)*interval {
				_ = conn.Close()
				return
			}
			// One request at a time: ssh waits for each answer in turn.
			if asking.CompareAndSwap(false, true) {
				go func() {
					defer asking.Store(false)
					if _, _, err := conn.SendRequest(request, true, nil); err == nil {
						last.Store(time.Now().UnixNano())
					}
				}()
			}
		}
	}
}
