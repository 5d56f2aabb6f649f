package endpoint

import (
	"net"
	"sync"
	"time"
)

// admitConn takes a connection slot, a share of its peer address's
// handshakes and a handshake token for a new connection from addr, or says
// which limit refuses it. The peer's share is checked first, so that an
// address past it spends none of the destination's allowance.
func (l *listener) admitConn(lim Limits, addr string) string {
	if int(l.conns.Add(1)) > lim.Conns {
		l.conns.Add(-1)
		return RefusedConnections
	}
	if !l.peers.take(addr, lim) {
		l.conns.Add(-1)
		return RefusedPeer
	}
	select {
	case l.handshakes <- struct{}{}:
	default:
		l.peers.done(addr, false)
		l.conns.Add(-1)
		return RefusedHandshakes
	}
	if !l.handshakeRate.take() {
		<-l.handshakes
		l.peers.done(addr, false)
		l.conns.Add(-1)
		return RefusedHandshakes
	}
	return ""
}

// bucket is a token bucket whose tokens can be given back: a handshake
// that authenticates returns what it took, so that only failed handshakes
// (strangers, floods) spend a peer's or a destination's allowance, and a
// source that syncs often never runs short.
type bucket struct {
	mu     sync.Mutex
	rate   float64 // tokens per second
	burst  float64
	tokens float64
	at     time.Time
}

func newBucket(rate float64, burst int) *bucket {
	return &bucket{rate: rate, burst: float64(burst), tokens: float64(burst), at: time.Now()}
}

// refill adds what has accrued since the last look; b.mu is held.
func (b *bucket) refill(now time.Time) {
	b.tokens = min(b.burst, b.tokens+now.Sub(b.at).Seconds()*b.rate)
	b.at = now
}

// take takes a token, or says false when there is none.
func (b *bucket) take() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill(time.Now())
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// give returns a token taken.
func (b *bucket) give() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tokens = min(b.burst, b.tokens+1)
}

// full says the bucket is as a new one would be.
func (b *bucket) full() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill(time.Now())
	return b.tokens >= b.burst
}

// peerLimits bound the work one peer address makes a destination do before
// it has authenticated, so that a flood from one address (idle sockets, or
// failed handshakes as fast as it can open them) takes a share of the
// destination's handshake slots and rate, never all of them.
type peerLimits struct {
	mu    sync.Mutex
	peers map[string]*peer
}

// peer is what one address has in flight and its allowance.
type peer struct {
	inflight int
	rate     *bucket
}

// prunePeersAbove is how many peers are remembered before idle ones are
// forgotten.
const prunePeersAbove = 256

// take admits a handshake from addr, or says false when the address has
// HandshakesPerPeer in flight already or has spent its allowance of
// PeerHandshakeRate.
func (p *peerLimits) take(addr string, lim Limits) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.peers == nil {
		p.peers = map[string]*peer{}
	}
	if len(p.peers) > prunePeersAbove {
		for a, pe := range p.peers {
			if pe.inflight == 0 && pe.rate.full() {
				delete(p.peers, a)
			}
		}
	}
	pe := p.peers[addr]
	if pe == nil {
		pe = &peer{rate: newBucket(lim.PeerHandshakeRate, lim.HandshakesPerPeer)}
		p.peers[addr] = pe
	}
	if pe.inflight >= lim.HandshakesPerPeer || !pe.rate.take() {
		return false
	}
	pe.inflight++
	return true
}

// done says a handshake from addr has ended; one that authenticated gives
// its token back.
func (p *peerLimits) done(addr string, authenticated bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pe := p.peers[addr]; pe != nil {
		pe.inflight--
		if authenticated {
			pe.rate.give()
		}
	}
}

// peerAddr is the address part of a connection's remote address: what
// per-peer limits count by.
func peerAddr(c net.Conn) string {
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}

// bannerConn gives a connection until the banner deadline to send its
// first byte (an ssh client sends its version line at once) and, once it
// has, until the handshake deadline: a silent socket holds a handshake slot
// for the short time only.
type bannerConn struct {
	net.Conn
	handshake time.Time
	heard     bool
}

// Read reads, and moves the deadline out to the handshake's once the peer
// has said something.
func (c *bannerConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.heard {
		c.heard = true
		_ = c.Conn.SetDeadline(c.handshake)
	}
	return n, err
}
