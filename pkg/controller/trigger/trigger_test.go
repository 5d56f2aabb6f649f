package trigger

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
)

var t0 = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

func at(d time.Duration) *metav1.Time { t := metav1.NewTime(t0.Add(d)); return &t }

func failedAt(d time.Duration) volsyncv1alpha1.SyncStatus {
	return volsyncv1alpha1.SyncStatus{LastSyncStartTime: at(d),
		LatestMoverStatus: &volsyncv1alpha1.MoverStatus{Result: volsyncv1alpha1.MoverResultFailed}}
}

// synced is the status after a sync that started and ended then.
func synced(start, end time.Duration) volsyncv1alpha1.SyncStatus {
	return volsyncv1alpha1.SyncStatus{LastSyncStartTime: at(start), LastSyncTime: at(end)}
}

// failedAfter is the status of a sync that started at start and failed,
// after one that completed at done.
func failedAfter(done, start time.Duration) volsyncv1alpha1.SyncStatus {
	st := failedAt(start)
	st.LastSyncTime = at(done)
	return st
}

func withManual(st volsyncv1alpha1.SyncStatus, v string) volsyncv1alpha1.SyncStatus {
	st.LastManualSync = v
	return st
}

func TestDecide(t *testing.T) {
	every5 := &volsyncv1alpha1.TriggerSpec{Schedule: ptr.To("*/5 * * * *")}
	manual := &volsyncv1alpha1.TriggerSpec{Manual: "first"}
	yearly := &volsyncv1alpha1.TriggerSpec{Schedule: ptr.To("0 0 1 1 *")}
	both := &volsyncv1alpha1.TriggerSpec{Schedule: ptr.To("*/5 * * * *"), Manual: "kick"}
	cases := map[string]struct {
		trigger    *volsyncv1alpha1.TriggerSpec
		paused     bool
		status     volsyncv1alpha1.SyncStatus
		failed     time.Duration // after t0; 0: not known
		changed    bool          // the spec changed since the failure
		now        time.Duration // after t0
		start      bool
		reason     string
		next       time.Duration // after t0; -1: none
		after      time.Duration
		msgContain string
	}{
		"no trigger: back to back": {now: time.Minute, start: true, reason: volsyncv1alpha1.SynchronizingReasonSched, next: -1},
		"no trigger, paused": {paused: true, now: time.Minute, reason: volsyncv1alpha1.SynchronizingReasonSched, next: -1,
			msgContain: "paused"},
		"no trigger, failed a moment ago: wait": {status: failedAt(0), now: 10 * time.Second,
			reason: volsyncv1alpha1.SynchronizingReasonSched, next: -1, after: 50 * time.Second, msgContain: "failed"},
		"no trigger, failed long ago: retry": {status: failedAt(0), now: 2 * time.Minute, start: true,
			reason: volsyncv1alpha1.SynchronizingReasonSched, next: -1},
		"a long sync that failed a moment ago: the pause counts from the failure": {status: failedAt(0), failed: 5 * time.Minute,
			now: 5*time.Minute + 10*time.Second, reason: volsyncv1alpha1.SynchronizingReasonSched, next: -1, after: 50 * time.Second, msgContain: "failed"},
		"schedule, never synced: at once (VolSync's Initial state)": {trigger: every5, now: 2 * time.Minute, start: true,
			reason: volsyncv1alpha1.SynchronizingReasonSched, next: 5 * time.Minute},
		"yearly schedule, never synced: at once, not next January": {trigger: yearly, now: 2 * time.Minute, start: true,
			reason: volsyncv1alpha1.SynchronizingReasonSched, next: 35*24*time.Hour + 14*time.Hour},
		"schedule, never synced, failed a moment ago: the retry pause": {trigger: every5, status: failedAt(0), now: 10 * time.Second,
			reason: volsyncv1alpha1.SynchronizingReasonSched, next: 5 * time.Minute, after: 50 * time.Second, msgContain: "failed"},
		"schedule, never synced, paused": {trigger: every5, paused: true, now: 2 * time.Minute,
			reason: volsyncv1alpha1.SynchronizingReasonSched, next: 5 * time.Minute, msgContain: "paused"},
		"schedule, before the next time": {trigger: every5, status: synced(0, time.Minute), now: 2 * time.Minute,
			reason: volsyncv1alpha1.SynchronizingReasonSched, next: 5 * time.Minute, after: 3 * time.Minute, msgContain: "scheduled"},
		"schedule, time reached": {trigger: every5, status: synced(0, time.Minute), now: 5 * time.Minute, start: true,
			reason: volsyncv1alpha1.SynchronizingReasonSched, next: 5 * time.Minute},
		"schedule, counted from the last start": {trigger: every5, now: 7 * time.Minute,
			status: synced(5*time.Minute, 6*time.Minute),
			reason: volsyncv1alpha1.SynchronizingReasonSched, next: 10 * time.Minute, after: 3 * time.Minute},
		"schedule, taken over from VolSync: counted from the last end": {trigger: every5, now: 4 * time.Minute,
			status: volsyncv1alpha1.SyncStatus{LastSyncTime: at(3 * time.Minute)},
			reason: volsyncv1alpha1.SynchronizingReasonSched, next: 5 * time.Minute, after: time.Minute},
		"schedule, missed while syncing: catch up at once": {trigger: every5, now: 16 * time.Minute,
			status: synced(5*time.Minute, 15*time.Minute),
			start:  true, reason: volsyncv1alpha1.SynchronizingReasonSched, next: 10 * time.Minute},
		"schedule, failed: the schedule paces the retry": {trigger: every5, now: 10 * time.Minute,
			status: failedAfter(0, 5*time.Minute), start: true, reason: volsyncv1alpha1.SynchronizingReasonSched, next: 10 * time.Minute},
		"schedule, paused: shows the time, does not start": {trigger: every5, paused: true, now: 6 * time.Minute,
			status: synced(0, time.Minute),
			reason: volsyncv1alpha1.SynchronizingReasonSched, next: 5 * time.Minute, msgContain: "paused"},
		"manual beside a schedule: the manual trigger decides (VolSync's precedence)": {trigger: both,
			status: synced(0, time.Minute), now: 2 * time.Minute, start: true, reason: volsyncv1alpha1.SynchronizingReasonManual, next: -1},
		"manual beside a schedule, value done: no scheduled sync": {trigger: both, now: 6 * time.Minute,
			status: withManual(synced(0, time.Minute), "kick"), reason: volsyncv1alpha1.SynchronizingReasonManual, next: -1, msgContain: "manual"},
		"manual, new value": {trigger: manual, now: time.Minute, start: true, reason: volsyncv1alpha1.SynchronizingReasonManual, next: -1},
		"manual, value done": {trigger: manual, now: time.Minute, status: withManual(synced(0, time.Second), "first"),
			reason: volsyncv1alpha1.SynchronizingReasonManual, next: -1, msgContain: "manual"},
		"manual, value done but never synced: at once": {trigger: manual, now: time.Minute,
			status: volsyncv1alpha1.SyncStatus{LastManualSync: "first"}, start: true, reason: volsyncv1alpha1.SynchronizingReasonManual, next: -1},
		"manual, failed a moment ago": {trigger: manual, status: failedAt(0), now: 5 * time.Second,
			reason: volsyncv1alpha1.SynchronizingReasonManual, next: -1, after: 55 * time.Second},
		"manual, failed a moment ago, the spec changed since: at once": {trigger: manual, status: failedAt(0), now: 5 * time.Second,
			changed: true, start: true, reason: volsyncv1alpha1.SynchronizingReasonManual, next: -1},
		"no trigger, failed a moment ago, the spec changed since: at once": {status: failedAt(0), now: 10 * time.Second,
			changed: true, start: true, reason: volsyncv1alpha1.SynchronizingReasonSched, next: -1},
		"manual, paused": {trigger: manual, paused: true, now: time.Minute, reason: volsyncv1alpha1.SynchronizingReasonManual,
			next: -1, msgContain: "paused"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			in := Input{Trigger: tc.trigger, Paused: tc.paused, Status: &tc.status,
				Now: t0.Add(tc.now), RetryAfter: time.Minute, ChangedSinceFailure: tc.changed}
			if tc.failed != 0 {
				in.FailedAt = t0.Add(tc.failed)
			}
			d, err := Decide(in)
			require.NoError(t, err)
			assert.Equal(t, tc.start, d.Start, "start")
			assert.Equal(t, tc.reason, d.Reason, "reason")
			if tc.next < 0 {
				assert.Nil(t, d.NextSyncTime)
			} else if assert.NotNil(t, d.NextSyncTime) {
				assert.Equal(t, t0.Add(tc.next), d.NextSyncTime.UTC())
			}
			assert.Equal(t, tc.after, d.After, "after")
			assert.Contains(t, d.Message, tc.msgContain)
		})
	}
}

func TestDecideRefusesBadSchedule(t *testing.T) {
	_, err := Decide(Input{Trigger: &volsyncv1alpha1.TriggerSpec{Schedule: ptr.To("61 * * * *")},
		Status: &volsyncv1alpha1.SyncStatus{}, Now: t0})
	require.ErrorContains(t, err, `spec.trigger.schedule "61 * * * *"`)
}

func TestMacrosParse(t *testing.T) {
	for _, s := range []string{"@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "0 */2 * * mon-fri"} {
		_, err := ParseSchedule(s)
		assert.NoError(t, err, s)
	}
}

func TestComplete(t *testing.T) {
	every1 := &volsyncv1alpha1.TriggerSpec{Schedule: ptr.To("*/1 * * * *")}
	cases := map[string]struct {
		trigger    *volsyncv1alpha1.TriggerSpec
		status     volsyncv1alpha1.SyncStatus
		start, end time.Duration
		ok         bool
		want       Completion
	}{
		"no trigger":                {start: 0, end: time.Minute, ok: true},
		"manual, succeeded: echoed": {trigger: &volsyncv1alpha1.TriggerSpec{Manual: "b"}, status: volsyncv1alpha1.SyncStatus{LastManualSync: "a"}, ok: true, want: Completion{LastManualSync: "b"}},
		"manual, failed: not echoed": {trigger: &volsyncv1alpha1.TriggerSpec{Manual: "b"}, status: volsyncv1alpha1.SyncStatus{LastManualSync: "a"},
			want: Completion{LastManualSync: "a"}},
		"schedule, within the interval":             {trigger: every1, start: 0, end: 30 * time.Second, ok: true},
		"schedule, ran over two starts":             {trigger: every1, start: 0, end: 150 * time.Second, ok: true, want: Completion{Missed: 2}},
		"schedule, ended exactly on the next start": {trigger: every1, start: 0, end: time.Minute, ok: true, want: Completion{Missed: 1}},
		"manual beside a schedule: no interval to miss": {trigger: &volsyncv1alpha1.TriggerSpec{Schedule: ptr.To("*/1 * * * *"), Manual: "m"},
			start: 0, end: 150 * time.Second, ok: true, want: Completion{LastManualSync: "m"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, Complete(tc.trigger, &tc.status, t0.Add(tc.start), t0.Add(tc.end), tc.ok))
		})
	}
}

func TestPhaseOf(t *testing.T) {
	for reason, want := range map[string]Phase{
		volsyncv1alpha1.SynchronizingReasonSync: Syncing, volsyncv1alpha1.SynchronizingReasonCleanup: CleaningUp,
		volsyncv1alpha1.SynchronizingReasonSched: Idle, volsyncv1alpha1.SynchronizingReasonManual: Idle,
		volsyncv1alpha1.SynchronizingReasonError: Idle,
	} {
		st := &volsyncv1alpha1.SyncStatus{Conditions: []metav1.Condition{{Type: volsyncv1alpha1.ConditionSynchronizing, Reason: reason}}}
		assert.Equal(t, want, PhaseOf(st), reason)
	}
	assert.Equal(t, Idle, PhaseOf(&volsyncv1alpha1.SyncStatus{}))
}
