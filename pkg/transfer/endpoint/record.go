package endpoint

import (
	"encoding/binary"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/crypto/ssh"

	"github.com/ferrysync/ferry/pkg/transfer/internal/fault"
	"github.com/ferrysync/ferry/pkg/transfer/servercmd"
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
	// complete: the last receiver of the current sync exited 0. A source
	// saying `shutdown 0` without one (and without a skip agreed) is not
	// believed: the replica may not hold what it says.
	complete bool
	// needed is what the current sync's source said its volume uses when
	// the replica ran out of space (servercmd.NoSpaceRequest); 0: it did
	// not say.
	needed uint64
	// gen moves whenever the record is dropped or replaced, so that a sum
	// of the volume begun before cannot become the record after.
	gen uint64
}

type recorded struct {
	source, volume treedigest.Sum
	at             time.Time
}

// serveGlobal answers a connection's global requests: the base and
// unchanged offers, and "no" to everything else (port forwarding,
// keepalives); it notes a source's word that the volume ran out of space.
func (s *Server) serveGlobal(l *listener, log logr.Logger, reqs <-chan *ssh.Request) {
	var v verification // this connection's, so that no other sync relies on it
	for req := range reqs {
		if req.Type == servercmd.NoSpaceRequest && len(req.Payload) == 8 {
			l.record.mu.Lock()
			l.record.needed = binary.BigEndian.Uint64(req.Payload)
			l.record.mu.Unlock()
		}
		ok := false
		var reply []byte
		if len(req.Payload) == len(treedigest.Sum{}) && fault.At(fault.Answer) == nil {
			var sum treedigest.Sum
			copy(sum[:], req.Payload)
			switch req.Type {
			case treedigest.Request:
				ok = s.unchanged(l, log, &v, sum)
			case treedigest.BaseRequest:
				ok = s.base(l, log, &v, sum)
				if ok && l.dest.InPlace {
					reply = []byte(treedigest.InPlace)
				}
			}
		}
		if req.WantReply {
			_ = req.Reply(ok, reply)
		}
	}
}

// verification is a connection's proof that the volume summed as the
// record says, valid while the record's generation stays gen.
type verification struct {
	ok  bool
	gen uint64
}

// base says whether the source may sync incrementally from the tree whose
// digest it offers: the last completed sync received that tree, and the
// volume still is what that sync left.
func (s *Server) base(l *listener, log logr.Logger, v *verification, sum treedigest.Sum) bool {
	r := &l.record
	r.mu.Lock()
	defer r.mu.Unlock()
	return s.verify(l, log, v, sum)
}

// unchanged takes the source's offer of the tree it is about to send and
// says whether the sync may be skipped: the last completed sync received
// that very tree and the volume still is what that sync left.
func (s *Server) unchanged(l *listener, log logr.Logger, v *verification, offered treedigest.Sum) bool {
	r := &l.record
	r.mu.Lock()
	defer r.mu.Unlock()
	r.offered = &offered
	r.complete, r.needed = false, 0 // an offer starts a new sync
	r.skipped = s.verify(l, log, v, offered)
	return r.skipped
}

// verify says, with the record locked, whether the last completed sync
// received the tree of digest source and the record may stand for the
// volume now: it is younger than the full-sync interval, no receiver runs,
// and the volume sums as it did right after the sync (once per connection
// and record generation). A volume changed behind Ferry's back loses the
// record.
func (s *Server) verify(l *listener, log logr.Logger, v *verification, source treedigest.Sum) bool {
	r := &l.record
	if r.last == nil || r.last.source != source || s.fullSync <= 0 || time.Since(r.last.at) > s.fullSync || l.receiving() {
		return false
	}
	if v.ok && v.gen == r.gen {
		return true
	}
	now, err := treedigest.Of(l.ctx, l.dest.Volume)
	if err != nil {
		log.Info("could not sum the volume; syncing in full", "error", err.Error())
		return false
	}
	if now != r.last.volume {
		log.Info("the volume changed since the last sync; syncing in full")
		r.last = nil
		r.gen++
		return false
	}
	v.ok, v.gen = true, r.gen
	return true
}

// forget drops the record: the volume is about to change.
func (r *record) forget() {
	r.mu.Lock()
	r.last, r.skipped, r.complete = nil, false, false
	r.gen++
	r.mu.Unlock()
}

// received notes how a receiver of the current sync ended.
func (r *record) received(ok bool) {
	r.mu.Lock()
	r.complete = ok
	r.mu.Unlock()
}

// noTransfer says why a sync whose source said `shutdown 0` is counted
// failed.
const noTransfer = "the source said the sync succeeded, but no transfer into this destination completed during it (nor did the destination agree to skip one); the sync is counted failed"

// takeNeeded returns what the ending sync's source said its volume uses,
// if the replica ran out of space, and forgets it.
func (r *record) takeNeeded() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.needed
	r.needed = 0
	return int64(min(n, 1<<62))
}

// ended records how the sync ended and returns its result: the source's
// code, but a failure where the source said 0 of a sync in which no
// receiver completed and no skip was agreed (with why). A success with an
// offer becomes the new record, anything else leaves none. The volume is
// summed before the source hears that the sync is over, so whatever anyone
// does to the volume once the sync is reported (a pod that mounts the
// replica, a restore into it) comes after the sum, and the next sync sees
// it. A receiver starting meanwhile (another connection) voids the sum. A
// Recorded event says when the record is in.
func (s *Server) ended(l *listener, log logr.Logger, code int) (int, string) {
	r := &l.record
	r.mu.Lock()
	offered, skipped, complete := r.offered, r.skipped, r.complete
	r.offered, r.skipped, r.complete = nil, false, false
	if skipped && code == 0 && r.last != nil {
		r.mu.Unlock()
		return 0, "" // the volume is as the record says
	}
	r.last = nil
	r.gen++
	gen := r.gen
	r.mu.Unlock()
	if code == 0 && !complete {
		log.Info("no transfer completed in the sync the source ended with success; counted failed")
		return incomplete, noTransfer
	}
	if code != 0 || offered == nil {
		return code, ""
	}
	volume, err := treedigest.Of(l.ctx, l.dest.Volume) // not under the lock: offers on other connections are answered
	r.mu.Lock()
	current := r.gen == gen // no receiver started, no other sync ended
	if current && err == nil {
		r.last = &recorded{source: *offered, volume: volume, at: time.Now()}
	}
	r.mu.Unlock()
	switch {
	case !current:
	case err != nil:
		log.Info("could not sum the volume after the sync; the next one runs in full", "error", err.Error())
	default:
		emit(l, Event{Kind: Recorded})
	}
	return 0, ""
}

// receiving says whether an rsync receiver runs for the destination.
func (l *listener) receiving() bool {
	l.runMu.Lock()
	defer l.runMu.Unlock()
	return len(l.running) > 0
}
