// Package endpoint is the destination side of Ferry's data plane: one ssh
// server per node that receives syncs for many destination volumes, in place
// of VolSync's per-destination sshd pod.
//
// Each destination gets its own listener. An ssh server proves its identity
// (the host key) before it learns anything about the client, and every
// destination has its own host key (the "destination" key of its Secret,
// pinned by its source as destination.pub), so destinations cannot share a
// port; the Service in front of a destination targets its port on the node.
// A listener lets in exactly one client key (source.pub), so a key opens
// exactly one volume.
//
// On a connection, only session channels and exec requests are served: the
// rsync server command a stock client sends (checked by package servercmd,
// then run confined to the volume by package confine) and `shutdown N`, which
// ends the sync with result N as VolSync's source does. Shells, ptys,
// subsystems, port forwarding and anything else are refused with a message.
//
// endpoint.go holds the server and its destinations; conn.go a
// destination's connections and sessions; preauth.go and limits.go what a
// peer may make the node do, before authenticating and after; exec.go the
// two requests; running.go a destination's transfers from admission to
// exit; record.go what a destination remembers of its last sync.
package endpoint

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/crypto/ssh"

	"github.com/ferrysync/ferry/pkg/transfer/cgroup"
	"github.com/ferrysync/ferry/pkg/transfer/confine"
	"github.com/ferrysync/ferry/pkg/transfer/keepalive"
	"github.com/ferrysync/ferry/pkg/transfer/sshkeys"
)

// Destination is one volume that receives syncs.
type Destination struct {
	// ID names the destination in logs and events (namespace/name).
	ID string
	// Keys are the host key and the one authorized client key.
	Keys *sshkeys.Destination
	// Volume is the host path where the volume is mounted read-write.
	Volume string
	// Dir is the directory inside the volume that syncs write to.
	Dir string
	// Privileged lets syncs preserve ownership, setuid bits and devices.
	Privileged bool
	// RunAs is the ordinary user an unprivileged destination's rsync runs
	// as (default DefaultRunAs). Ignored when Privileged.
	RunAs *confine.Identity
	// InPlace allows sources to update files in place (rsync --inplace):
	// only where the replica is never itself the image (each completed
	// sync is snapshotted), since a sync cut short leaves files half
	// updated. A source asking for it elsewhere is refused.
	InPlace bool
	// Limits lower the server's cgroup limits for this destination's
	// transfers (its CR's moverResources).
	Limits cgroup.Limits
	// ListenAddr is where to listen, "host:port"; port 0 picks a free one.
	ListenAddr string
	// HoldOnShutdown holds the destination (see Server.Hold) the moment a
	// source says `shutdown 0`, before the reply goes back: no transfer can
	// start between the end of a sync and the snapshot of it, however slow
	// the one who lifts the hold is to hear of it. (On every shutdown,
	// transfers still running, on another channel or connection, are ended
	// first and the sync is reported failed: nothing writes once a sync is
	// said to be over. A `shutdown 0` after which no transfer completed,
	// and no skip was agreed, is reported failed too.)
	HoldOnShutdown bool
	// Events, when set, receives what happens on this destination, in order,
	// on a goroutine of its own: a slow receiver (one that writes to the
	// apiserver) never delays a transfer. Events queued when the
	// destination is removed are still delivered before Remove returns.
	Events func(Event)
}

// DefaultRunAs is the user and group an unprivileged destination's rsync
// runs as when its CR's moverSecurityContext names none: 65532, the
// "nonroot" user of distroless images, so files a tenant sends are never
// root's.
var DefaultRunAs = confine.Identity{UID: 65532, GID: 65532}

// EventKind says what happened.
type EventKind string

const (
	// RsyncStarted: a client started an rsync transfer.
	RsyncStarted EventKind = "RsyncStarted"
	// RsyncEnded: a transfer's rsync exited; ExitCode is its status.
	RsyncEnded EventKind = "RsyncEnded"
	// SyncEnded: the source said `shutdown N`; ExitCode is N.
	SyncEnded EventKind = "SyncEnded"
	// Refused: a request was refused; Message says why.
	Refused EventKind = "Refused"
	// Recorded: the destination summed its volume after a completed sync
	// whose source offered its tree's digest; a later sync of that same
	// tree, into this volume unchanged, may now be skipped.
	Recorded EventKind = "Recorded"
)

// Event is something that happened on a destination.
type Event struct {
	Kind EventKind
	// Time is when it happened.
	Time time.Time
	// ExitCode of rsync (RsyncEnded) or the shutdown result (SyncEnded).
	ExitCode int
	// BytesReceived and BytesSent are the transfer's bytes on its channel
	// (RsyncEnded).
	BytesReceived, BytesSent int64
	// Message explains a refusal or failure.
	Message string
	// Needed is, when the replica ran out of space, what the source said
	// its volume uses (SyncEnded; 0: it did not say).
	Needed int64
	// OOMKilled: the receiver was killed past its memory limit
	// (RsyncEnded).
	OOMKilled bool
}

// Server serves the node's destinations.
type Server struct {
	log      logr.Logger
	scratch  string
	rsync    string
	limits   Limits
	refusals func(cause string)
	cgroups  *cgroup.Pool
	fullSync time.Duration
	// keepalive is how often each connection is asked for a sign of life.
	keepalive time.Duration
	// transfers holds a token per running rsync receiver.
	transfers chan struct{}

	mu    sync.Mutex
	dests map[string]*listener
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger.
func WithLogger(l logr.Logger) Option { return func(s *Server) { s.log = l } }

// WithRsync sets the rsync binary (default: rsync from PATH). It must live
// under /usr, as the confinement shows nothing else of the host.
func WithRsync(path string) Option { return func(s *Server) { s.rsync = path } }

// WithLimits replaces DefaultLimits.
func WithLimits(l Limits) Option { return func(s *Server) { s.limits = l } }

// WithRefusals has fn called (synchronously: it must be quick, a counter)
// with the cause of each refusal past a limit.
func WithRefusals(fn func(cause string)) Option { return func(s *Server) { s.refusals = fn } }

// WithKeepalive sets how often the endpoint asks each source's connection
// for a sign of life (keepalive.DefaultInterval by default); one silent for
// keepalive.Missed intervals is closed, ending its transfers.
func WithKeepalive(d time.Duration) Option { return func(s *Server) { s.keepalive = d } }

// WithCgroups runs each rsync receiver in a cgroup of its own from pool.
func WithCgroups(pool *cgroup.Pool) Option { return func(s *Server) { s.cgroups = pool } }

// New returns a server. scratch is an empty directory the agent owns, used as
// the mount point of each confinement's private root.
func New(scratch string, opts ...Option) *Server {
	s := &Server{log: logr.Discard(), scratch: scratch, limits: DefaultLimits, fullSync: DefaultFullSyncInterval,
		keepalive: keepalive.DefaultInterval, dests: map[string]*listener{}}
	for _, o := range opts {
		o(s)
	}
	s.transfers = make(chan struct{}, s.limits.Transfers)
	return s
}

// refuse counts a refusal.
func (s *Server) refuse(cause string) {
	if s.refusals != nil {
		s.refusals(cause)
	}
}

// listener is one destination's port and its live connections.
type listener struct {
	dest   Destination
	ln     net.Listener
	config *ssh.ServerConfig
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	held   atomic.Bool
	// events feeds the destination's Events callback; delivered is closed
	// once the last one is delivered.
	events    chan Event
	delivered chan struct{}
	// ending counts `shutdown` requests whose SyncEnded is not delivered yet.
	ending atomic.Int32
	// running are the destination's admitted transfers (see admit).
	runMu   sync.Mutex
	running map[*transfer]struct{}
	// conns counts live connections; handshakes holds a token per running
	// handshake, paced by handshakeRate.
	conns         atomic.Int32
	handshakes    chan struct{}
	handshakeRate *bucket
	// peers bound each peer address's share of the handshakes.
	peers peerLimits
	// record is what the destination remembers of its last sync.
	record record
}

// shutdownGrace is how long a shutdown waits for transfers that are
// finishing before it ends them.
const shutdownGrace = 2 * time.Second

// eventQueue bounds the events waiting for delivery; a transfer waits when
// the receiver is this far behind.
const eventQueue = 256

// Add starts serving d and returns the address it listens on. Adding an ID
// that is already served is an error; Remove it first to change it.
func (s *Server) Add(d Destination) (net.Addr, error) {
	if d.Keys == nil || d.Keys.HostKey == nil || d.Keys.Authorized == nil {
		return nil, fmt.Errorf("destination %s: host key and authorized key are required", d.ID)
	}
	if id := d.RunAs; !d.Privileged && id != nil && (id.UID == 0 || id.GID == 0) {
		return nil, fmt.Errorf("destination %s: running as uid %d, gid %d writes root's files, which needs the namespace's "+
			"privileged-movers permission", d.ID, id.UID, id.GID)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.dests[d.ID]; dup {
		return nil, fmt.Errorf("destination %s is already served", d.ID)
	}
	ln, err := net.Listen("tcp", d.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("destination %s: listen on %s: %w", d.ID, d.ListenAddr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &listener{dest: d, ln: ln, config: serverConfig(d), ctx: ctx, cancel: cancel,
		handshakes:    make(chan struct{}, s.limits.Handshakes),
		handshakeRate: newBucket(s.limits.HandshakeRate, s.limits.Handshakes)}
	if d.Events != nil {
		l.events, l.delivered = make(chan Event, eventQueue), make(chan struct{})
		go func() {
			defer close(l.delivered)
			for e := range l.events {
				d.Events(e)
				if e.Kind == SyncEnded {
					l.ending.Add(-1)
				}
			}
		}()
	}
	s.dests[d.ID] = l
	l.wg.Add(1)
	go s.accept(l)
	s.log.Info("serving destination", "destination", d.ID, "address", ln.Addr().String())
	return ln.Addr(), nil
}

// Remove stops serving a destination: it closes its listener, ends its
// connections and kills running transfers, and returns when they are gone.
// Removing an unknown ID is not an error.
func (s *Server) Remove(id string) {
	s.mu.Lock()
	l, ok := s.dests[id]
	delete(s.dests, id)
	s.mu.Unlock()
	if !ok {
		return
	}
	l.cancel()
	_ = l.ln.Close()
	l.wg.Wait()
	if l.events != nil {
		close(l.events)
		<-l.delivered
	}
	s.log.Info("stopped serving destination", "destination", id)
}

// Hold refuses new rsync transfers into a destination while held is true:
// the agent holds a volume after a sync ended until its snapshot is cut, so
// the snapshot shows exactly what the sync wrote. `shutdown N` is still
// answered. Holding an unknown ID does nothing.
func (s *Server) Hold(id string, held bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.dests[id]; ok {
		l.held.Store(held)
	}
}

// Ending says whether a destination's `shutdown` has not been delivered to
// its Events yet: until it has, whoever lifts holds must not lift the one
// that shutdown set, for it does not know of that sync yet.
func (s *Server) Ending(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.dests[id]
	return ok && l.ending.Load() > 0
}

// Connected is how many connections the destinations have open. A source
// holds one for the whole of a sync, so an agent that stops waits (up to its
// grace period) for none before it cuts the syncs arriving.
func (s *Server) Connected() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range s.dests {
		n += int(l.conns.Load())
	}
	return n
}

// Close removes every destination.
func (s *Server) Close() {
	s.mu.Lock()
	ids := make([]string, 0, len(s.dests))
	for id := range s.dests {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	for _, id := range ids {
		s.Remove(id)
	}
}

// emit queues an event for the destination's Events callback.
func emit(l *listener, e Event) {
	if l.events != nil {
		e.Time = time.Now()
		if e.Kind == SyncEnded {
			l.ending.Add(1)
		}
		l.events <- e
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}
