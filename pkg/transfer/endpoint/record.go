package endpoint

import (
	"sync"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/crypto/ssh"

	"github.com/ferrysync/ferry/pkg/transfer/treedigest"
)

// DefaultFullSyncInterval is how long a record of a completed sync lets
// later syncs be skipped before one runs rsync in full anyway.
const DefaultFullSyncInterval = 24 * time.Hour

// WithFullSyncInterval sets how long a record of a completed sync lets
// later syncs be skipped (DefaultFullSyncInterval); 0 never skips.
func WithFullSyncInterval(d time.Duration) Option { return func(s *Server) { s.fullSync = d } }

// record is what a destination remembers of its last completed sync: the
// digest of the tree the source sent, the digest of its own volume right
// after, and when. Kept in memory only: an agent restarted, or a volume
// served on another node, starts without one and syncs in full.
type record struct {
	mu sync.Mutex
	// last is the record of the last completed sync (nil: none usable).
	last *recorded
	// offered is the digest the current sync's source offered (nil: none,
	// as from VolSync's source).
	offered *treedigest.Sum
	// skipped: the current sync was skipped, and last still describes the
	// volume.
	skipped bool
	// gen moves whenever the record is dropped or replaced, so that a sum
	// of the volume begun before cannot become the record after.
	gen uint64
	// summing is closed once the sum of the volume after the last sync is
	// in (taken after the source is told the sync ended, not before).
	summing chan struct{}
}

type recorded struct {
	source, volume treedigest.Sum
	at             time.Time
}

// serveGlobal answers a connection's global requests: the unchanged offer,
// and "no" to everything else (port forwarding, keepalives).
func (s *Server) serveGlobal(l *listener, log logr.Logger, reqs <-chan *ssh.Request) {
	for req := range reqs {
		ok := false
		if req.Type == treedigest.Request && len(req.Payload) == len(treedigest.Sum{}) {
			var offered treedigest.Sum
			copy(offered[:], req.Payload)
			ok = s.unchanged(l, log, offered)
		}
		if req.WantReply {
			_ = req.Reply(ok, nil)
		}
	}
}

// unchanged takes the source's offer and says whether the sync may be
// skipped: the offer matches the last completed sync's source, the record
// is younger than the full-sync interval, nothing runs, and the volume
// sums as it did right after that sync.
func (s *Server) unchanged(l *listener, log logr.Logger, offered treedigest.Sum) bool {
	r := &l.record
	r.mu.Lock()
	summing := r.summing
	r.mu.Unlock()
	if summing != nil {
		<-summing
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.offered, r.skipped = &offered, false
	last := r.last
	if last == nil || last.source != offered || s.fullSync <= 0 || time.Since(last.at) > s.fullSync || l.receiving() {
		return false
	}
	now, err := treedigest.Of(l.dest.Volume)
	if err != nil {
		log.Info("could not sum the volume; syncing in full", "error", err.Error())
		return false
	}
	if now != last.volume {
		log.Info("the volume changed since the last sync; syncing in full")
		r.last = nil
		return false
	}
	r.skipped = true
	return true
}

// forget drops the record: the volume is about to change.
func (r *record) forget() {
	r.mu.Lock()
	r.last, r.skipped = nil, false
	r.gen++
	r.mu.Unlock()
}

// ended records how the sync ended: a success with an offer becomes the new
// record, anything else leaves none. The volume is summed in the
// background, so the source hears at once that the sync is over: nothing
// writes the volume now (the source's rsync has ended, and the agent holds
// the volume until the next sync), a later offer waits for the sum, and a
// receiver starting meanwhile voids it. A Recorded event says when it is in.
func (s *Server) ended(l *listener, log logr.Logger, code int) {
	r := &l.record
	r.mu.Lock()
	defer r.mu.Unlock()
	offered, skipped := r.offered, r.skipped
	r.offered, r.skipped = nil, false
	if skipped && code == 0 && r.last != nil {
		return // the volume is as the record says
	}
	r.last = nil
	r.gen++
	if code != 0 || offered == nil {
		return
	}
	gen, source, done := r.gen, *offered, make(chan struct{})
	r.summing = done
	l.wg.Add(1) // Remove waits for it before it closes the events
	go func() {
		defer l.wg.Done()
		defer close(done)
		volume, err := treedigest.Of(l.dest.Volume)
		r.mu.Lock()
		current := r.gen == gen // no receiver started, no other sync ended
		if current && err == nil {
			r.last = &recorded{source: source, volume: volume, at: time.Now()}
		}
		r.mu.Unlock()
		switch {
		case !current:
		case err != nil:
			log.Info("could not sum the volume after the sync; the next one runs in full", "error", err.Error())
		default:
			emit(l, Event{Kind: Recorded}) // not under the lock: the events' reader may be slow
		}
	}()
}

// receiving says whether an rsync receiver runs for the destination.
func (l *listener) receiving() bool {
	l.runMu.Lock()
	defer l.runMu.Unlock()
	return len(l.running) > 0
}
