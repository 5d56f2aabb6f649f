// Package cycle runs the sync cycle both kinds share, as VolSync's state
// machine does: idle until the trigger says a sync is due, then the mover
// synchronizes, then cleans up, then the status records the sync and the
// cycle waits again. The mover (the source's or the destination's) says
// only what its own steps did; this package owns lastSyncStartTime,
// lastSyncTime, lastSyncDuration, nextSyncTime, lastManualSync,
// latestMoverStatus, the Synchronizing condition, the VolSync metrics and
// the events that mark the cycle.
//
// Everything is kept in the CR's status (the phase in the Synchronizing
// condition), so a controller restarted at any point goes on from there.
package cycle

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/metrics"
	"github.com/ferrysync/ferry/pkg/controller/trigger"
)

// Event reasons of the cycle, on the CR.
const (
	EventSyncStarted   = "SyncStarted"
	EventSyncCompleted = "SyncCompleted"
	EventSyncFailed    = "SyncFailed"
	EventSyncMissed    = "SyncIntervalMissed"
)

// Result is what a mover's Synchronize step found.
type Result struct {
	// Done is true when the sync has ended, well or not.
	Done bool
	// Succeeded says how it ended.
	Succeeded bool
	// Logs are rsync's summary lines, or the error.
	Logs string
	// Progress is the running transfer's progress (nil: none).
	Progress *volsyncv1alpha1.TransferProgress
	// Waiting explains, while not done, what the sync waits for.
	Waiting string
	// Watched: what the sync waits for arrives through a watch (the
	// assignment's status), so the CR is looked at only every Resync
	// meanwhile. A destination waits for its source this way between
	// syncs: polled, each would cost its reads and a status write every
	// Poll, for ever.
	Watched bool
}

// Mover is one kind's part of the cycle. Each method is called again and
// again until it reports done, so each must be idempotent.
type Mover interface {
	// Start prepares a new sync; it runs before the sync is recorded as
	// started and may run twice for one sync after a crash.
	Start(ctx context.Context) error
	// Synchronize moves the sync on and says whether it has ended.
	Synchronize(ctx context.Context) (Result, error)
	// Cleanup removes the sync's temporary objects; true when done. It
	// learns whether the sync succeeded.
	Cleanup(ctx context.Context, succeeded bool) (bool, error)
}

// CR is what the cycle reads and writes of a ReplicationSource or
// ReplicationDestination.
type CR struct {
	Object  client.Object
	Status  *volsyncv1alpha1.SyncStatus
	Trigger *volsyncv1alpha1.TriggerSpec
	Paused  bool
	Metrics metrics.Object
}

// Options are the cycle's settings.
type Options struct {
	// Now is the clock.
	Now func() time.Time
	// RetryAfter paces retries of failed syncs that no schedule paces.
	RetryAfter time.Duration
	// Poll is how often a running step is looked at when no watch will
	// say that it moved on.
	Poll time.Duration
	// Resync is how often a step a watch follows (Result.Watched) is
	// looked at anyway: for what no watch covers, such as a user's key
	// Secret replaced between syncs.
	Resync time.Duration
	// Events records the cycle's events.
	Events events.EventRecorder
}

// Step moves the cycle on as far as it can now and says when to look again
// (0: when something changes). The caller writes cr.Status afterwards.
func Step(ctx context.Context, cr CR, m Mover, o Options) (time.Duration, error) {
	st := cr.Status
	now := o.Now()
	phase := trigger.PhaseOf(st)
	if phase == trigger.Idle {
		d, wait := idle(cr, now, o)
		if !d.Start {
			return wait, nil
		}
		// One sync per second at most: a sync is known by its start time,
		// which the status keeps to the second.
		if last := st.LastSyncStartTime; last != nil && !now.Truncate(time.Second).After(last.Time) {
			return now.Truncate(time.Second).Add(time.Second).Sub(now), nil
		}
		if err := m.Start(ctx); err != nil {
			return 0, err
		}
		st.LastSyncStartTime = &metav1.Time{Time: now}
		st.Progress = nil
		setSync(cr, now, volsyncv1alpha1.SynchronizingReasonSync, "sync started")
		o.Events.Eventf(unversioned(cr.Object), nil, corev1.EventTypeNormal, EventSyncStarted, "Sync", "sync started")
		phase = trigger.Syncing
	}
	if phase == trigger.Syncing {
		res, err := m.Synchronize(ctx)
		if err != nil {
			return 0, err
		}
		st.Progress = res.Progress
		if !res.Done {
			msg := "sync in progress"
			if res.Waiting != "" {
				msg = res.Waiting
			}
			setSync(cr, now, volsyncv1alpha1.SynchronizingReasonSync, msg)
			if res.Watched {
				return o.Resync, nil
			}
			return o.Poll, nil
		}
		result := volsyncv1alpha1.MoverResultSuccessful
		if !res.Succeeded {
			result = volsyncv1alpha1.MoverResultFailed
		}
		st.LatestMoverStatus = &volsyncv1alpha1.MoverStatus{Result: result, Logs: res.Logs}
		setSync(cr, now, volsyncv1alpha1.SynchronizingReasonCleanup, "the sync ended; removing its temporary objects")
	}
	ok := !failed(st)
	done, err := m.Cleanup(ctx, ok)
	if err != nil {
		return 0, err
	}
	if !done {
		return o.Poll, nil
	}
	finish(cr, now, ok, o)
	// Set the waiting reason and the next time now; when syncs run back to
	// back, the next starts in the next pass, after this status is written.
	d, wait := idle(cr, now, o)
	if d.Start {
		return time.Millisecond, nil
	}
	return wait, nil
}

// idle decides whether a sync is due and, if not, records what the CR waits
// for and says when to look again.
func idle(cr CR, now time.Time, o Options) (trigger.Decision, time.Duration) {
	st := cr.Status
	// A failure is dated by the Synchronizing condition turning to Error
	// (now, if it is being recorded in this pass).
	// The condition's generation is the spec's when the failure was last
	// written: an older one means the user changed the spec since.
	failedAt, changed := now, false
	if c := meta.FindStatusCondition(st.Conditions, volsyncv1alpha1.ConditionSynchronizing); c != nil && c.Reason == volsyncv1alpha1.SynchronizingReasonError {
		failedAt, changed = c.LastTransitionTime.Time, c.ObservedGeneration < cr.Object.GetGeneration()
	}
	d, err := trigger.Decide(trigger.Input{Trigger: cr.Trigger, Paused: cr.Paused, Status: st,
		Now: now, RetryAfter: o.RetryAfter, FailedAt: failedAt, ChangedSinceFailure: changed})
	if err != nil {
		// The spec must change; the watch brings it back.
		setSync(cr, now, volsyncv1alpha1.SynchronizingReasonError, err.Error())
		return trigger.Decision{}, 0
	}
	st.NextSyncTime = timePtr(d.NextSyncTime)
	if d.Start {
		return d, 0
	}
	reason, msg := d.Reason, d.Message
	if failed(st) && !cr.Paused {
		reason = volsyncv1alpha1.SynchronizingReasonError
		msg = fmt.Sprintf("the last sync failed: %s; %s", st.LatestMoverStatus.Logs, d.Message)
	}
	setSync(cr, now, reason, msg)
	return d, d.After
}

// finish records an ended sync in the status, metrics and events.
func finish(cr CR, now time.Time, ok bool, o Options) {
	st := cr.Status
	start := now
	if st.LastSyncStartTime != nil {
		start = st.LastSyncStartTime.Time
	}
	c := trigger.Complete(cr.Trigger, st, start, now, ok)
	st.LastManualSync = c.LastManualSync
	st.Progress = nil
	if ok {
		firstLine, _, _ := strings.Cut(st.LatestMoverStatus.Logs, "\n")
		d := now.Sub(start)
		st.LastSyncTime = &metav1.Time{Time: now}
		st.LastSyncDuration = &metav1.Duration{Duration: d}
		cr.Metrics.Synced(d)
		o.Events.Eventf(cr.Object, nil, corev1.EventTypeNormal, EventSyncCompleted, "Sync", "sync completed in %s: %s",
			d.Round(time.Millisecond), firstLine)
	} else {
		cr.Metrics.OutOfSync()
		o.Events.Eventf(cr.Object, nil, corev1.EventTypeWarning, EventSyncFailed, "Sync", "sync failed: %s", st.LatestMoverStatus.Logs)
	}
	if c.Missed > 0 {
		cr.Metrics.Missed(c.Missed)
		o.Events.Eventf(cr.Object, nil, corev1.EventTypeWarning, EventSyncMissed, "Sync",
			"%d scheduled start(s) passed while the sync ran: the schedule is shorter than a sync takes", c.Missed)
	}
	// Back to idle; Step sets the waiting reason.
	meta.RemoveStatusCondition(&st.Conditions, volsyncv1alpha1.ConditionSynchronizing)
}

func failed(st *volsyncv1alpha1.SyncStatus) bool {
	return st.LatestMoverStatus != nil && st.LatestMoverStatus.Result == volsyncv1alpha1.MoverResultFailed
}

// setSync sets the Synchronizing condition, dated now by the cycle's clock
// when it changes: a failure's retry is paced from that date, so it must
// be on the same clock as the decision.
func setSync(cr CR, now time.Time, reason, msg string) {
	status := metav1.ConditionFalse
	if reason == volsyncv1alpha1.SynchronizingReasonSync || reason == volsyncv1alpha1.SynchronizingReasonCleanup {
		status = metav1.ConditionTrue
	}
	if msg == "" {
		msg = reason
	}
	meta.SetStatusCondition(&cr.Status.Conditions, metav1.Condition{Type: volsyncv1alpha1.ConditionSynchronizing,
		Status: status, Reason: reason, Message: msg, ObservedGeneration: cr.Object.GetGeneration(), LastTransitionTime: metav1.NewTime(now)})
}

// Reconciled sets the Reconciled condition: True (with a note the user
// should know, if any), or False with the error that says what to fix.
func Reconciled(obj client.Object, st *volsyncv1alpha1.SyncStatus, err error, note string) {
	c := metav1.Condition{Type: volsyncv1alpha1.ConditionReconciled, Status: metav1.ConditionTrue,
		Reason: volsyncv1alpha1.ReconciledReasonComplete, Message: "Reconcile complete", ObservedGeneration: obj.GetGeneration()}
	if note != "" {
		c.Message += "; " + note
	}
	if err != nil {
		c.Status, c.Reason, c.Message = metav1.ConditionFalse, volsyncv1alpha1.ReconciledReasonError, err.Error()
	}
	meta.SetStatusCondition(&st.Conditions, c)
}

// Transient says whether err is the apiserver's weather (a write conflict,
// a timeout, throttling, a restart) rather than anything about the CR:
// such an error is retried and does not set the Reconciled condition False,
// which would flap with every apiserver hiccup.
func Transient(err error) bool {
	return err != nil && (apierrors.IsConflict(err) || apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) ||
		apierrors.IsTooManyRequests(err) || apierrors.IsServiceUnavailable(err) || errors.Is(err, context.DeadlineExceeded))
}

// unversioned refers to a CR without its resourceVersion, for events whose
// note never changes: the events library folds repeated events into one
// with a count when their references are equal, and the version, which
// every status write changes, would make each a new event (one POST per
// sync and CR at scale).
func unversioned(obj client.Object) runtime.Object {
	var kind string
	switch obj.(type) {
	case *volsyncv1alpha1.ReplicationSource:
		kind = "ReplicationSource"
	case *volsyncv1alpha1.ReplicationDestination:
		kind = "ReplicationDestination"
	default:
		return obj
	}
	return &corev1.ObjectReference{APIVersion: volsyncv1alpha1.GroupVersion.String(), Kind: kind,
		Namespace: obj.GetNamespace(), Name: obj.GetName(), UID: obj.GetUID()}
}

func timePtr(t *time.Time) *metav1.Time {
	if t == nil {
		return nil
	}
	return &metav1.Time{Time: *t}
}

// Pause ends a sync that is waiting for data (nothing is moving) when the
// CR is paused: the cycle goes back to idle, where paused keeps it.
func Pause(cr CR) {
	if trigger.PhaseOf(cr.Status) == trigger.Syncing {
		meta.RemoveStatusCondition(&cr.Status.Conditions, volsyncv1alpha1.ConditionSynchronizing)
		cr.Status.Progress = nil
	}
}
