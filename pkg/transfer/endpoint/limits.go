package endpoint

import "time"

// Limits bound what peers can make a node do, so that a flood against one
// destination costs the node little and leaves other destinations served.
// What goes past a limit is refused at once (the connection closed, the
// channel or transfer rejected with a message) and counted (WithRefusals).
type Limits struct {
	// Conns is how many connections one destination holds at once.
	Conns int
	// Handshakes is how many unauthenticated handshakes one destination
	// runs at once (each costs an RSA signature with the host key), and
	// HandshakeRate how many failed ones it allows per second, in bursts
	// of Handshakes (one that authenticates gives its token back).
	Handshakes    int
	HandshakeRate float64
	// HandshakeTimeout ends a handshake that has not completed, and
	// BannerTimeout one whose peer has sent nothing at all.
	HandshakeTimeout time.Duration
	BannerTimeout    time.Duration
	// HandshakesPerPeer is how many of a destination's handshakes one peer
	// address runs at once, and PeerHandshakeRate how many failed ones it
	// is allowed per second: below the destination's, so that one address
	// cannot take them all.
	HandshakesPerPeer int
	PeerHandshakeRate float64
	// Channels is how many session channels one connection has open at
	// once (a VolSync source uses two: rsync, then shutdown).
	Channels int
	// Transfers is how many rsync receivers run at once on the node, and
	// TransfersPerDestination how many of them one destination's key can
	// hold (a source runs one at a time), so that one tenant cannot take
	// the node's every slot.
	Transfers               int
	TransfersPerDestination int
	// IdleTimeout ends a receiver whose peer has sent nothing for that long
	// (rsync's own --timeout on the server side): an idle receiver holds a
	// slot for that long at most.
	IdleTimeout time.Duration
}

// banner is how long a silent peer may hold a handshake slot: the
// BannerTimeout, or the HandshakeTimeout where that is shorter or the
// BannerTimeout unset.
func (l Limits) banner() time.Duration {
	if l.BannerTimeout <= 0 || l.BannerTimeout > l.HandshakeTimeout {
		return l.HandshakeTimeout
	}
	return l.BannerTimeout
}

// DefaultLimits are generous for any real source (one connection, a
// channel or two, one transfer per destination) and small for a flood.
var DefaultLimits = Limits{Conns: 8, Handshakes: 8, HandshakeRate: 10, HandshakeTimeout: 10 * time.Second,
	BannerTimeout: 2 * time.Second, HandshakesPerPeer: 2, PeerHandshakeRate: 4, Channels: 4, Transfers: 32,
	TransfersPerDestination: 2, IdleTimeout: 10 * time.Minute}

// Causes of refusals, as counted.
const (
	RefusedConnections = "connections"
	RefusedHandshakes  = "handshakes"
	// RefusedPeer: one peer address past its share of handshakes.
	RefusedPeer      = "peer"
	RefusedChannels  = "channels"
	RefusedTransfers = "transfers"
	// RefusedDestinationTransfers: one destination past its share of the
	// node's transfers.
	RefusedDestinationTransfers = "destination-transfers"
)
