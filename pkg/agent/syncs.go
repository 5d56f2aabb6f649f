package agent

import (
	"fmt"
	"time"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	"github.com/ferrysync/ferry/pkg/bytesize"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
)

// The destination role's rules, pure: what its status says while it
// serves, and how the endpoint's events make and end a sync.

// serveStatus writes a serving destination's status: its path and address,
// and its phase from the syncs live now (live) and the last one's result.
// It returns whether the volume is held (agentv1alpha1's Holding).
func serveStatus(ma *agentv1alpha1.MountAssignment, path string, addr *agentv1alpha1.Endpoint, live int) bool {
	hold := ma.Holding()
	ma.Status.MountPath, ma.Status.Endpoint = path, addr
	switch {
	case live > 0:
		ma.Status.Phase = agentv1alpha1.PhaseTransferring
	case hold:
		ma.Status.Phase = agentv1alpha1.PhaseHolding
		ma.Status.CurrentSync = nil
	default:
		// A sync in status but none live is one a restart cut off; the
		// source retries it.
		ma.Status.Phase, ma.Status.CurrentSync = agentv1alpha1.PhaseMounted, nil
	}
	setReady(ma, true, agentv1alpha1.ReasonServing, "the volume is mounted read-write and accepts syncs")
	return hold
}

// applyEnd writes the end of a sync into a destination's status: held
// when it succeeded, mounted and accepting the source's next try when not.
func applyEnd(ma *agentv1alpha1.MountAssignment, res *agentv1alpha1.SyncResult) {
	ma.Status.LastSync, ma.Status.CurrentSync = res.DeepCopy(), nil
	ma.Status.Phase = agentv1alpha1.PhaseMounted
	if res.Succeeded {
		ma.Status.Phase = agentv1alpha1.PhaseHolding
	}
}

// tracker follows the syncs arriving at one destination: a sync runs from
// its first rsync to the source's `shutdown N`, over as many rsync runs
// (tries, and the passes of an incremental sync) as the source makes.
type tracker struct {
	// live is how many rsync runs are on the wire now.
	live int
	// start is when the sync's first rsync began; received and sent add
	// up its runs' bytes.
	start          time.Time
	received, sent int64
}

// step is what one endpoint event asks of the agent.
type step struct {
	// mutate changes the status; nil: no write.
	mutate func(*agentv1alpha1.MountAssignment)
	// ended is the result of a sync that ended with this event, before
	// the volume is flushed (flush it if it Succeeded).
	ended *agentv1alpha1.SyncResult
}

// observe advances the tracker by one event of the sync of generation
// gen. full words a full volume given what the source's uses.
func (t *tracker) observe(e endpoint.Event, gen int64, full func(needed int64) string) step {
	switch e.Kind {
	case endpoint.RsyncStarted:
		if t.live == 0 && t.start.IsZero() {
			t.start = e.Time
		}
		t.live++
		start := t.start
		return step{mutate: func(ma *agentv1alpha1.MountAssignment) {
			ma.Status.Phase = agentv1alpha1.PhaseTransferring
			if ma.Status.CurrentSync == nil || ma.Status.CurrentSync.Generation != gen {
				ma.Status.CurrentSync = &agentv1alpha1.SyncProgress{Generation: gen, StartTime: timePtr(start)}
			}
			ma.Status.CurrentSync.Attempt++
		}}
	case endpoint.RsyncEnded:
		t.live--
		t.received += e.BytesReceived
		t.sent += e.BytesSent
		if t.live > 0 {
			return step{}
		}
		return step{mutate: func(ma *agentv1alpha1.MountAssignment) { ma.Status.Phase = agentv1alpha1.PhaseMounted }}
	case endpoint.SyncEnded:
		res := &agentv1alpha1.SyncResult{Generation: gen, StartTime: timePtr(t.start), EndTime: timePtr(e.Time),
			BytesReceived: t.received, BytesSent: t.sent, ExitCode: int32(e.ExitCode), Succeeded: e.ExitCode == 0}
		switch {
		case e.ExitCode != 0 && e.Needed > 0:
			res.Error = full(e.Needed)
		case e.Message != "":
			// A message is a failure whatever the code says: never a
			// success with an error beside it.
			res.Error, res.Succeeded = e.Message, false
		case e.ExitCode != 0:
			res.Error = fmt.Sprintf("the source ended the sync with status %d", e.ExitCode)
		}
		t.start, t.received, t.sent = time.Time{}, 0, 0
		// The change is the result itself, which the caller keeps as
		// unreported and every write applies: write with nothing more.
		return step{ended: res, mutate: func(*agentv1alpha1.MountAssignment) {}}
	}
	return step{}
}

// noSpaceMessage words noSpace's message.
func noSpaceMessage(claim, size string, needed int64) string {
	return fmt.Sprintf("the destination volume is full: claim %s, a filesystem %s, ran out of space; the source's volume uses %s: "+
		"give the destination (spec.rsync.capacity) at least that, with room for a changed file's new copy", claim, size, bytesize.Format(needed))
}
