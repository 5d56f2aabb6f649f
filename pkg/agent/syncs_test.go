package agent

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
)

func TestServeStatus(t *testing.T) {
	addr := &agentv1alpha1.Endpoint{Address: "10.0.0.1", Port: 8022}
	ok := func(gen int64) *agentv1alpha1.SyncResult {
		return &agentv1alpha1.SyncResult{Generation: gen, Succeeded: true}
	}
	cases := map[string]struct {
		gen     int64
		last    *agentv1alpha1.SyncResult
		current bool
		live    int
		hold    bool
		phase   agentv1alpha1.Phase
	}{
		"first sync not come yet":                   {gen: 1, phase: agentv1alpha1.PhaseMounted},
		"a sync on the wire":                        {gen: 1, current: true, live: 1, phase: agentv1alpha1.PhaseTransferring},
		"the asked sync succeeded: held":            {gen: 1, last: ok(1), hold: true, phase: agentv1alpha1.PhaseHolding},
		"raised after the image: accepting":         {gen: 2, last: ok(1), phase: agentv1alpha1.PhaseMounted},
		"a sync in status none live: a restart cut": {gen: 2, last: ok(1), current: true, phase: agentv1alpha1.PhaseMounted},
		"failed: not held, the source retries":      {gen: 2, last: &agentv1alpha1.SyncResult{Generation: 2}, phase: agentv1alpha1.PhaseMounted},
		"held while a try is live stays held":       {gen: 1, last: ok(1), current: true, live: 1, hold: true, phase: agentv1alpha1.PhaseTransferring},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			ma := &agentv1alpha1.MountAssignment{Spec: agentv1alpha1.MountAssignmentSpec{SyncGeneration: tc.gen},
				Status: agentv1alpha1.MountAssignmentStatus{LastSync: tc.last}}
			if tc.current {
				ma.Status.CurrentSync = &agentv1alpha1.SyncProgress{Generation: tc.gen}
			}
			assert.Equal(t, tc.hold, serveStatus(ma, "/vol", addr, tc.live), "hold")
			assert.Equal(t, tc.phase, ma.Status.Phase)
			assert.Equal(t, "/vol", ma.Status.MountPath)
			assert.Equal(t, addr, ma.Status.Endpoint)
			if tc.live == 0 {
				assert.Nil(t, ma.Status.CurrentSync, "no sync live: none in status")
			}
		})
	}
}

// trackerStep is what one event must leave: a status write or none, the
// phase and attempt after it, the sync's result if it ended.
type trackerStep struct {
	write   bool
	phase   agentv1alpha1.Phase
	attempt int32
	ended   *agentv1alpha1.SyncResult
}

// trackerCase is a whole sequence of endpoint events and what each leaves.
type trackerCase struct {
	events []endpoint.Event
	wants  []trackerStep
}

// TestTracker drives the endpoint-event state machine through whole syncs
// (trackerCases) and checks the status each event leaves and the result
// each sync ends with.
func TestTracker(t *testing.T) {
	full := func(needed int64) string { return noSpaceMessage("ns/data", "of 1.0 GiB", needed) }
	for name, tc := range trackerCases(full) {
		t.Run(name, func(t *testing.T) {
			var tr tracker
			ma := &agentv1alpha1.MountAssignment{Spec: agentv1alpha1.MountAssignmentSpec{SyncGeneration: 3}}
			var start time.Time
			for i, e := range tc.events {
				if e.Kind == endpoint.RsyncStarted && start.IsZero() {
					start = e.Time
				}
				st := tr.observe(e, 3, full)
				checkTrackerStep(t, fmt.Sprintf("event %d (%s)", i, e.Kind), tc.wants[i], st, ma, e.Time, start)
				if st.ended != nil {
					assert.Equal(t, tracker{}, tr, "a new sync starts from nothing")
				}
			}
		})
	}
}

// checkTrackerStep applies a step to ma and checks it against w; at is the
// event's time, start the sync's first rsync's.
func checkTrackerStep(t *testing.T, what string, w trackerStep, st step, ma *agentv1alpha1.MountAssignment, at, start time.Time) {
	t.Helper()
	assert.Equal(t, w.write, st.mutate != nil, "%s: a status write", what)
	if st.mutate != nil {
		st.mutate(ma)
	}
	assert.Equal(t, w.phase, ma.Status.Phase, "%s: phase", what)
	if w.attempt > 0 {
		require.NotNil(t, ma.Status.CurrentSync, what)
		assert.Equal(t, w.attempt, ma.Status.CurrentSync.Attempt, "%s: attempt", what)
		assert.Equal(t, start, ma.Status.CurrentSync.StartTime.Time, "%s: the sync's start is its first rsync's", what)
	}
	if w.ended == nil {
		assert.Nil(t, st.ended, "%s: no sync ended", what)
		return
	}
	require.NotNil(t, st.ended, "%s: the sync ended", what)
	got := *st.ended
	assert.Equal(t, timePtr(at), got.EndTime)
	assert.Equal(t, timePtr(start), got.StartTime)
	got.StartTime, got.EndTime = nil, nil
	assert.Equal(t, *w.ended, got)
}

// trackerCases are TestTracker's event sequences; full words a full volume.
func trackerCases(full func(needed int64) string) map[string]trackerCase {
	t0 := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	return map[string]trackerCase{
		"one try that succeeds": {
			events: []endpoint.Event{
				{Kind: endpoint.RsyncStarted, Time: at(0)},
				{Kind: endpoint.RsyncEnded, Time: at(5), BytesReceived: 100, BytesSent: 10},
				{Kind: endpoint.SyncEnded, Time: at(6)},
			},
			wants: []trackerStep{
				{write: true, phase: agentv1alpha1.PhaseTransferring, attempt: 1},
				{write: true, phase: agentv1alpha1.PhaseMounted, attempt: 1},
				{write: true, phase: agentv1alpha1.PhaseMounted, attempt: 1, ended: &agentv1alpha1.SyncResult{Generation: 3, Succeeded: true,
					BytesReceived: 100, BytesSent: 10}},
			},
		},
		"a failed try, a retry, two passes at once: bytes add up, one start": {
			events: []endpoint.Event{
				{Kind: endpoint.RsyncStarted, Time: at(0)},
				{Kind: endpoint.RsyncEnded, Time: at(1), ExitCode: 12, BytesReceived: 7},
				{Kind: endpoint.RsyncStarted, Time: at(3)},
				{Kind: endpoint.RsyncStarted, Time: at(4)},
				{Kind: endpoint.RsyncEnded, Time: at(8), BytesReceived: 50},
				{Kind: endpoint.RsyncEnded, Time: at(9), BytesReceived: 60, BytesSent: 1},
				{Kind: endpoint.SyncEnded, Time: at(9)},
			},
			wants: []trackerStep{
				{write: true, phase: agentv1alpha1.PhaseTransferring, attempt: 1},
				{write: true, phase: agentv1alpha1.PhaseMounted, attempt: 1},
				{write: true, phase: agentv1alpha1.PhaseTransferring, attempt: 2},
				{write: true, phase: agentv1alpha1.PhaseTransferring, attempt: 3},
				{write: false, phase: agentv1alpha1.PhaseTransferring, attempt: 3},
				{write: true, phase: agentv1alpha1.PhaseMounted, attempt: 3},
				{write: true, phase: agentv1alpha1.PhaseMounted, attempt: 3, ended: &agentv1alpha1.SyncResult{Generation: 3, Succeeded: true,
					BytesReceived: 117, BytesSent: 1}},
			},
		},
		"the source ends the sync failed": {
			events: []endpoint.Event{
				{Kind: endpoint.RsyncStarted, Time: at(0)},
				{Kind: endpoint.RsyncEnded, Time: at(1), ExitCode: 23},
				{Kind: endpoint.SyncEnded, Time: at(2), ExitCode: 23},
			},
			wants: []trackerStep{
				{write: true, phase: agentv1alpha1.PhaseTransferring, attempt: 1},
				{write: true, phase: agentv1alpha1.PhaseMounted, attempt: 1},
				{write: true, phase: agentv1alpha1.PhaseMounted, attempt: 1, ended: &agentv1alpha1.SyncResult{Generation: 3, ExitCode: 23,
					Error: "the source ended the sync with status 23"}},
			},
		},
		"out of space: the message names the claim and the need": {
			events: []endpoint.Event{
				{Kind: endpoint.RsyncStarted, Time: at(0)},
				{Kind: endpoint.RsyncEnded, Time: at(1), ExitCode: 11},
				{Kind: endpoint.SyncEnded, Time: at(2), ExitCode: 11, Needed: 2 << 30},
			},
			wants: []trackerStep{
				{write: true, phase: agentv1alpha1.PhaseTransferring, attempt: 1},
				{write: true, phase: agentv1alpha1.PhaseMounted, attempt: 1},
				{write: true, phase: agentv1alpha1.PhaseMounted, attempt: 1, ended: &agentv1alpha1.SyncResult{Generation: 3, ExitCode: 11,
					Error: full(2 << 30)}},
			},
		},
		"the endpoint's message is a failure even with status 0": {
			events: []endpoint.Event{{Kind: endpoint.SyncEnded, Time: at(2), Message: "1 transfer(s) still wrote"}},
			wants:  []trackerStep{{write: true, ended: &agentv1alpha1.SyncResult{Generation: 3, Error: "1 transfer(s) still wrote"}}},
		},
		"a refusal changes no status": {
			events: []endpoint.Event{{Kind: endpoint.Refused, Time: at(0), Message: "held"}},
			wants:  []trackerStep{{}},
		},
	}
}

func TestApplyEnd(t *testing.T) {
	ma := &agentv1alpha1.MountAssignment{Status: agentv1alpha1.MountAssignmentStatus{
		Phase: agentv1alpha1.PhaseTransferring, CurrentSync: &agentv1alpha1.SyncProgress{Generation: 2}}}
	applyEnd(ma, &agentv1alpha1.SyncResult{Generation: 2, Succeeded: true})
	assert.Equal(t, agentv1alpha1.PhaseHolding, ma.Status.Phase)
	assert.Nil(t, ma.Status.CurrentSync)
	applyEnd(ma, &agentv1alpha1.SyncResult{Generation: 2, Error: "x"})
	assert.Equal(t, agentv1alpha1.PhaseMounted, ma.Status.Phase, "a failed sync is not held")
}

func TestNoSpaceMessageNamesClaimSizeAndNeed(t *testing.T) {
	msg := noSpaceMessage("ns/data", "of 60.0 MiB", 80<<20)
	assert.Contains(t, msg, "claim ns/data")
	assert.Contains(t, msg, "60.0 MiB")
	assert.Contains(t, msg, "uses 80.0 MiB")
	assert.Contains(t, msg, "spec.rsync.capacity")
}
