package cycle

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/events"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/metrics"
)

// scripted is a mover whose steps say what the test tells them.
type scripted struct {
	starts   int
	result   Result
	cleaned  bool
	startErr error
}

func (s *scripted) Start(context.Context) error { s.starts++; return s.startErr }
func (s *scripted) Synchronize(context.Context) (Result, error) {
	return s.result, nil
}
func (s *scripted) Cleanup(context.Context, bool) (bool, error) { return s.cleaned, nil }

type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

func newCR(trigger *volsyncv1alpha1.TriggerSpec) (CR, *volsyncv1alpha1.ReplicationSource) {
	rs := &volsyncv1alpha1.ReplicationSource{ObjectMeta: metav1.ObjectMeta{Name: "rs", Namespace: "ns",
		CreationTimestamp: metav1.NewTime(time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC))}}
	return CR{Object: rs, Status: &rs.Status.SyncStatus, Trigger: trigger,
		Metrics: metrics.Object{Name: "rs", Namespace: "ns", Role: metrics.RoleSource}}, rs
}

func reason(st *volsyncv1alpha1.SyncStatus) string {
	c := meta.FindStatusCondition(st.Conditions, volsyncv1alpha1.ConditionSynchronizing)
	if c == nil {
		return ""
	}
	return c.Reason
}

// TestManualCycle walks one manual sync through every phase, as the status
// shows it to a user.
func TestManualCycle(t *testing.T) {
	ctx := context.Background()
	clk := &clock{now: time.Date(2026, 11, 26, 10, 1, 0, 0, time.UTC)}
	rec := events.NewFakeRecorder(10)
	o := Options{Now: clk.Now, RetryAfter: time.Minute, Poll: time.Second, Events: rec}
	cr, _ := newCR(&volsyncv1alpha1.TriggerSpec{Manual: "one"})
	m := &scripted{result: Result{Waiting: "sending"}}

	after, err := Step(ctx, cr, m, o)
	require.NoError(t, err)
	assert.Equal(t, volsyncv1alpha1.SynchronizingReasonSync, reason(cr.Status))
	assert.Equal(t, time.Second, after, "polls while the sync runs")
	assert.Equal(t, clk.now, cr.Status.LastSyncStartTime.Time)
	assert.Equal(t, 1, m.starts)
	assert.Contains(t, <-rec.Events, EventSyncStarted)

	clk.now = clk.now.Add(30 * time.Second)
	m.result = Result{Done: true, Succeeded: true, Logs: "sent 10 bytes"}
	_, err = Step(ctx, cr, m, o)
	require.NoError(t, err)
	assert.Equal(t, volsyncv1alpha1.SynchronizingReasonCleanup, reason(cr.Status), "cleanup not done yet")
	assert.Equal(t, volsyncv1alpha1.MoverResultSuccessful, cr.Status.LatestMoverStatus.Result)
	assert.Nil(t, cr.Status.LastSyncTime, "not complete before cleanup")

	m.cleaned = true
	after, err = Step(ctx, cr, m, o)
	require.NoError(t, err)
	assert.Equal(t, volsyncv1alpha1.SynchronizingReasonManual, reason(cr.Status))
	assert.Equal(t, "one", cr.Status.LastManualSync)
	assert.Equal(t, clk.now, cr.Status.LastSyncTime.Time)
	assert.Equal(t, 30*time.Second, cr.Status.LastSyncDuration.Duration)
	assert.Zero(t, after, "waits for the trigger to change")
	assert.Contains(t, <-rec.Events, EventSyncCompleted)

	_, err = Step(ctx, cr, m, o)
	require.NoError(t, err)
	assert.Equal(t, 1, m.starts, "no second sync for the same value")
}

// TestFailedSyncRetries: a failed sync records the error, does not echo the
// manual value, and is retried after RetryAfter.
func TestFailedSyncRetries(t *testing.T) {
	ctx := context.Background()
	clk := &clock{now: time.Date(2026, 11, 26, 10, 1, 0, 0, time.UTC)}
	o := Options{Now: clk.Now, RetryAfter: time.Minute, Poll: time.Second, Events: events.NewFakeRecorder(10)}
	cr, _ := newCR(&volsyncv1alpha1.TriggerSpec{Manual: "one"})
	m := &scripted{result: Result{Done: true, Logs: "rsync: connection refused"}, cleaned: true}
	after, err := Step(ctx, cr, m, o)
	require.NoError(t, err)
	assert.Equal(t, volsyncv1alpha1.MoverResultFailed, cr.Status.LatestMoverStatus.Result)
	assert.Equal(t, volsyncv1alpha1.SynchronizingReasonError, reason(cr.Status))
	c := meta.FindStatusCondition(cr.Status.Conditions, volsyncv1alpha1.ConditionSynchronizing)
	assert.Contains(t, c.Message, "connection refused")
	assert.Empty(t, cr.Status.LastManualSync)
	assert.Nil(t, cr.Status.LastSyncTime)
	assert.Equal(t, time.Minute, after)

	clk.now = clk.now.Add(time.Minute)
	m.result = Result{Waiting: "sending"}
	_, err = Step(ctx, cr, m, o)
	require.NoError(t, err)
	assert.Equal(t, 2, m.starts, "retried")
	assert.Equal(t, volsyncv1alpha1.SynchronizingReasonSync, reason(cr.Status))
}

// TestSpecChangeAfterFailureRetriesAtOnce: a sync fails; the user changes
// the spec (a new manual value after raising a limit), and the next sync
// starts at once instead of after the retry pause.
func TestSpecChangeAfterFailureRetriesAtOnce(t *testing.T) {
	ctx := context.Background()
	clk := &clock{now: time.Date(2026, 11, 26, 10, 1, 0, 0, time.UTC)}
	o := Options{Now: clk.Now, RetryAfter: time.Minute, Poll: time.Second, Events: events.NewFakeRecorder(10)}
	cr, rs := newCR(&volsyncv1alpha1.TriggerSpec{Manual: "small"})
	rs.Generation = 1
	m := &scripted{result: Result{Done: true, Logs: "rsync was killed: the transfer exceeded its memory limit"}, cleaned: true}
	after, err := Step(ctx, cr, m, o)
	require.NoError(t, err)
	assert.Equal(t, time.Minute, after, "unchanged, a failed sync waits for the retry pause")

	clk.now = clk.now.Add(5 * time.Second)
	rs.Generation = 2
	cr.Trigger.Manual = "enough"
	m.result = Result{Waiting: "sending"}
	_, err = Step(ctx, cr, m, o)
	require.NoError(t, err)
	assert.Equal(t, 2, m.starts, "started at once after the spec changed")
	assert.Equal(t, volsyncv1alpha1.SynchronizingReasonSync, reason(cr.Status))
}

// TestBackToBackOnePerSecond: without a trigger the next sync follows at
// once, but never two starts within one second (a sync is known by its
// start time).
func TestBackToBackOnePerSecond(t *testing.T) {
	ctx := context.Background()
	clk := &clock{now: time.Date(2026, 11, 26, 10, 1, 0, 200e6, time.UTC)}
	o := Options{Now: clk.Now, RetryAfter: time.Minute, Poll: time.Second, Events: events.NewFakeRecorder(10)}
	cr, _ := newCR(nil)
	m := &scripted{result: Result{Done: true, Succeeded: true}, cleaned: true}
	after, err := Step(ctx, cr, m, o)
	require.NoError(t, err)
	assert.Equal(t, time.Millisecond, after, "the next sync is due at once")
	cr.Status.LastSyncStartTime.Time = cr.Status.LastSyncStartTime.Truncate(time.Second) // as stored
	after, err = Step(ctx, cr, m, o)
	require.NoError(t, err)
	assert.Equal(t, 800*time.Millisecond, after, "waits for the next second")
	assert.Equal(t, 1, m.starts)
}

func TestStartErrorIsReturned(t *testing.T) {
	o := Options{Now: time.Now, Events: events.NewFakeRecorder(10)}
	cr, _ := newCR(nil)
	_, err := Step(context.Background(), cr, &scripted{startErr: errors.New("conflict")}, o)
	assert.ErrorContains(t, err, "conflict")
	assert.Nil(t, cr.Status.LastSyncStartTime, "not recorded as started")
}

func TestPausedAndInvalid(t *testing.T) {
	o := Options{Now: time.Now, Events: events.NewFakeRecorder(10)}
	cr, rs := newCR(&volsyncv1alpha1.TriggerSpec{Manual: "x"})
	cr.Paused = true
	m := &scripted{}
	_, err := Step(context.Background(), cr, m, o)
	require.NoError(t, err)
	assert.Zero(t, m.starts)
	assert.Contains(t, meta.FindStatusCondition(cr.Status.Conditions, volsyncv1alpha1.ConditionSynchronizing).Message, "paused")

	Reconciled(rs, cr.Status, Invalidf("spec.sourcePVC %q does not exist", "data"), "ignored on error")
	c := meta.FindStatusCondition(cr.Status.Conditions, volsyncv1alpha1.ConditionReconciled)
	assert.Equal(t, metav1.ConditionFalse, c.Status)
	assert.Equal(t, volsyncv1alpha1.ReconciledReasonError, c.Reason)
	assert.Equal(t, `spec.sourcePVC "data" does not exist`, c.Message)
	assert.True(t, IsInvalid(Invalidf("x")))
	assert.False(t, IsInvalid(errors.New("x")))
}

func TestTransient(t *testing.T) {
	gr := schema.GroupResource{Group: "volsync.backube", Resource: "replicationsources"}
	cases := map[string]struct {
		err  error
		want bool
	}{
		"none":                     {nil, false},
		"a write conflict":         {fmt.Errorf("update: %w", apierrors.NewConflict(gr, "rs", errors.New("changed"))), true},
		"the apiserver times out":  {apierrors.NewServerTimeout(gr, "get", 1), true},
		"throttled":                {apierrors.NewTooManyRequests("slow down", 1), true},
		"the apiserver restarting": {apierrors.NewServiceUnavailable("starting"), true},
		"a deadline":               {fmt.Errorf("get: %w", context.DeadlineExceeded), true},
		"forbidden: RBAC to fix":   {apierrors.NewForbidden(gr, "rs", errors.New("no")), false},
		"the user's to fix":        {Invalidf("spec.sourcePVC missing"), false},
		"anything else":            {errors.New("mount failed"), false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) { assert.Equal(t, tc.want, Transient(tc.err)) })
	}
}

// TestWatchedWaitIsNotPolled: a sync whose next move comes through a watch
// is looked at again only at the resync; one that is not watched is polled.
func TestWatchedWaitIsNotPolled(t *testing.T) {
	ctx := context.Background()
	clk := &clock{now: time.Date(2026, 11, 26, 10, 1, 0, 0, time.UTC)}
	o := Options{Now: clk.Now, RetryAfter: time.Minute, Poll: time.Second, Resync: 30 * time.Second, Events: events.NewFakeRecorder(10)}
	cr, _ := newCR(&volsyncv1alpha1.TriggerSpec{Manual: "one"})
	m := &scripted{result: Result{Waiting: "waiting for the source to connect", Watched: true}}
	after, err := Step(ctx, cr, m, o)
	require.NoError(t, err)
	assert.Equal(t, 30*time.Second, after, "the assignment's watch brings the next change; a resync catches the rest")
	assert.Equal(t, volsyncv1alpha1.SynchronizingReasonSync, reason(cr.Status))

	m.result = Result{Waiting: "waiting for the volume to attach"}
	after, err = Step(ctx, cr, m, o)
	require.NoError(t, err)
	assert.Equal(t, time.Second, after, "no watch: polled")
}

// TestUnversioned: two versions of a CR give one reference (so its starts
// fold into one event), of the CR's own kind.
func TestUnversioned(t *testing.T) {
	rs := &volsyncv1alpha1.ReplicationSource{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a", UID: "u", ResourceVersion: "7"}}
	later := rs.DeepCopy()
	later.ResourceVersion = "8"
	assert.Equal(t, unversioned(rs), unversioned(later))
	assert.Equal(t, &corev1.ObjectReference{APIVersion: "volsync.backube/v1alpha1", Kind: "ReplicationSource", Namespace: "ns", Name: "a", UID: "u"},
		unversioned(rs))
	rd := &volsyncv1alpha1.ReplicationDestination{ObjectMeta: metav1.ObjectMeta{Name: "b"}}
	assert.Equal(t, "ReplicationDestination", unversioned(rd).(*corev1.ObjectReference).Kind)
}
