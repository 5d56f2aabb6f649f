// Package trigger decides when a ReplicationSource or ReplicationDestination
// starts its next sync, for both kinds alike: a cron schedule, a manual
// trigger (one sync per new value; it wins over a schedule set beside it,
// as in VolSync), or none (back to back), and paused. A CR that has never
// completed a sync starts one at once, whatever its trigger says, as
// VolSync's Initial state does: a new replica is not left empty until the
// schedule's first time. It
// also says what a completed sync does to the status (lastSyncTime,
// lastManualSync, missed intervals). Everything here is a pure function of
// the spec, the status and the time, tested without an apiserver.
//
// Where a CR is in its sync cycle is kept in its Synchronizing condition, as
// VolSync keeps it: its reason is SyncInProgress while a sync runs,
// CleaningUp while the sync's temporary objects are removed, and a waiting
// reason otherwise. A restarted controller so picks up where it was.
package trigger

import (
	"fmt"
	"time"

	"github.com/robfig/cron/v3"
	"k8s.io/apimachinery/pkg/api/meta"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
)

// parser reads the cron syntax admission accepts: five fields, or an
// @-macro.
var parser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseSchedule parses a cronspec; the error says what is wrong with it.
func ParseSchedule(spec string) (cron.Schedule, error) {
	s, err := parser.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("spec.trigger.schedule %q: %w", spec, err)
	}
	return s, nil
}

// Phase is where a CR is in its sync cycle.
type Phase int

const (
	// Idle: no sync runs; the next starts when the trigger says.
	Idle Phase = iota
	// Syncing: a sync runs.
	Syncing
	// CleaningUp: the sync ended and its temporary objects go.
	CleaningUp
)

// PhaseOf reads the phase from the Synchronizing condition.
func PhaseOf(st *volsyncv1alpha1.SyncStatus) Phase {
	c := meta.FindStatusCondition(st.Conditions, volsyncv1alpha1.ConditionSynchronizing)
	switch {
	case c == nil:
		return Idle
	case c.Reason == volsyncv1alpha1.SynchronizingReasonSync:
		return Syncing
	case c.Reason == volsyncv1alpha1.SynchronizingReasonCleanup:
		return CleaningUp
	}
	return Idle
}

// Input is what decides whether a sync is due.
type Input struct {
	// Trigger is the CR's spec.trigger (nil: back to back).
	Trigger *volsyncv1alpha1.TriggerSpec
	// Paused is spec.paused.
	Paused bool
	// Status is the CR's status.
	Status *volsyncv1alpha1.SyncStatus
	// Now is the current time.
	Now time.Time
	// RetryAfter is how long a failed sync waits before it is tried again
	// when no schedule says when (manual or no trigger).
	RetryAfter time.Duration
	// FailedAt is when the last sync failed (zero: when it started).
	FailedAt time.Time
	// ChangedSinceFailure says the spec changed after the last sync
	// failed (a new manual value, a raised limit): the user's answer to
	// the failure, tried at once rather than after RetryAfter.
	ChangedSinceFailure bool
}

// Decision is when the next sync starts.
type Decision struct {
	// Start is true when a sync is due now.
	Start bool
	// Reason is the Synchronizing reason while not starting:
	// WaitingForSchedule or WaitingForManual.
	Reason string
	// Message explains the wait for a person.
	Message string
	// NextSyncTime is the next scheduled start (schedules only).
	NextSyncTime *time.Time
	// After is when to look again (0: only when something changes).
	After time.Duration
}

// Decide says whether a sync is due. An invalid schedule is an error (the
// CRD's pattern lets through a few that cron refuses, such as minute 61).
func Decide(in Input) (Decision, error) {
	st := in.Status
	failed := st.LatestMoverStatus != nil && st.LatestMoverStatus.Result == volsyncv1alpha1.MoverResultFailed
	var lastStart time.Time
	if st.LastSyncStartTime != nil {
		lastStart = st.LastSyncStartTime.Time
	}
	failedAt := in.FailedAt
	if failedAt.IsZero() {
		failedAt = lastStart
	}
	// retry holds a failed sync back when nothing else paces it and the
	// spec is as it was when the sync failed.
	retry := func(d Decision) Decision {
		if failed && !failedAt.IsZero() && !in.ChangedSinceFailure {
			if at := failedAt.Add(in.RetryAfter); in.Now.Before(at) {
				d.Start, d.After = false, at.Sub(in.Now)
				d.Message = fmt.Sprintf("the last sync failed; trying again at %s", at.UTC().Format(time.RFC3339))
			}
		}
		return d
	}
	t := in.Trigger
	// initial: no sync ever completed (VolSync's Initial state).
	initial := st.LastSyncTime == nil
	switch {
	case t != nil && t.Schedule != nil && t.Manual == "":
		sched, err := ParseSchedule(*t.Schedule)
		if err != nil {
			return Decision{}, err
		}
		// Counted from the last start (VolSync: the last end), or from
		// the last end a VolSync controller recorded before a takeover.
		from := lastStart
		if from.IsZero() && !initial {
			from = st.LastSyncTime.Time
		}
		if from.IsZero() {
			from = in.Now
		}
		next := sched.Next(from)
		d := Decision{Reason: volsyncv1alpha1.SynchronizingReasonSched, NextSyncTime: &next}
		if in.Paused {
			d.Message = "paused: no sync starts until spec.paused is false"
			return d, nil
		}
		if initial {
			// The first sync runs at once, and until one completes a
			// failed one is tried again after the retry pause.
			d.Start = true
			return retry(d), nil
		}
		if !in.Now.Before(next) {
			d.Start = true
			return d, nil
		}
		d.After = next.Sub(in.Now)
		d.Message = "waiting for the next scheduled sync at " + next.UTC().Format(time.RFC3339)
		return d, nil
	case t != nil && t.Manual != "":
		d := Decision{Reason: volsyncv1alpha1.SynchronizingReasonManual,
			Message: "waiting for spec.trigger.manual to change"}
		if in.Paused {
			d.Message = "paused: no sync starts until spec.paused is false"
			return d, nil
		}
		if t.Manual != st.LastManualSync || initial {
			d.Start, d.Message = true, ""
		}
		return retry(d), nil
	default:
		// No trigger: the next sync starts as soon as the last ends.
		d := Decision{Reason: volsyncv1alpha1.SynchronizingReasonSched, Start: !in.Paused}
		if in.Paused {
			d.Message = "paused: no sync starts until spec.paused is false"
		}
		return retry(d), nil
	}
}

// Completion is what the end of a sync does to the status.
type Completion struct {
	// LastManualSync is the value to echo (the manual trigger's value when
	// the sync ends; unchanged when it failed).
	LastManualSync string
	// Missed is how many scheduled starts passed while the sync ran: they
	// count in volsync_missed_intervals_total.
	Missed int
}

// Complete says what a sync that started at start and ended at end does to
// the status. A failed sync echoes no manual trigger: it is tried again.
func Complete(t *volsyncv1alpha1.TriggerSpec, st *volsyncv1alpha1.SyncStatus, start, end time.Time, succeeded bool) Completion {
	c := Completion{LastManualSync: st.LastManualSync}
	if t == nil {
		return c
	}
	if succeeded && t.Manual != "" {
		c.LastManualSync = t.Manual
	}
	if t.Schedule != nil && t.Manual == "" { // a manual trigger beside it rules
		if sched, err := ParseSchedule(*t.Schedule); err == nil {
			// Every scheduled start that passed while this sync still
			// ran did not happen on time (one catch-up sync follows).
			for n := sched.Next(start); !n.After(end); n = sched.Next(n) {
				c.Missed++
			}
		}
	}
	return c
}
