package agent

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/ferrysync/ferry/pkg/transfer/sender"
)

// records keeps, per replication source, what its last completed sync
// from this node sent (sender.Record), for the next sync's incremental
// pass. A source's assignment lives for one sync, but its name (rs-<uid>)
// is the same for every sync of the replication, so records are kept by
// name beyond the assignment. One not used for ttl (the full-sync
// interval, past which the destination syncs in full anyway) is dropped,
// so replications deleted, or moved to other nodes, leave nothing behind.
type records struct {
	ttl time.Duration
	mu  sync.Mutex
	m   map[types.NamespacedName]*usedRecord
}

type usedRecord struct {
	rec  *sender.Record
	used time.Time
}

// get returns the record of a source, new if it had none; nil when
// records are off (ttl 0: every sync runs in full).
func (r *records) get(key types.NamespacedName, now time.Time) *sender.Record {
	if r.ttl <= 0 {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, u := range r.m {
		if now.Sub(u.used) > r.ttl {
			delete(r.m, k)
		}
	}
	if r.m == nil {
		r.m = map[types.NamespacedName]*usedRecord{}
	}
	u := r.m[key]
	if u == nil {
		u = &usedRecord{rec: &sender.Record{}}
		r.m[key] = u
	}
	u.used = now
	return u.rec
}
