package agent

import (
	"testing"

	"github.com/stretchr/testify/assert"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
)

func TestDecideSource(t *testing.T) {
	done := func(gen int64, ok bool) *agentv1alpha1.SyncResult {
		return &agentv1alpha1.SyncResult{Generation: gen, Succeeded: ok}
	}
	cases := map[string]struct {
		gen               int64
		last              *agentv1alpha1.SyncResult
		current           int64 // status.currentSync's generation; 0: none
		running, finished int64
		want              sourceAction
	}{
		"nothing asked yet":                             {gen: 0, want: sourceIdle},
		"asked, never run":                              {gen: 1, want: sourceStart},
		"asked while running: never twice at once":      {gen: 2, running: 2, want: sourceBusy},
		"a newer generation while one runs: it waits":   {gen: 3, running: 2, want: sourceBusy},
		"the asked one ended (in status)":               {gen: 2, last: done(2, true), want: sourceIdle},
		"the asked one failed: not run again":           {gen: 2, last: done(2, false), want: sourceIdle},
		"ended here, status not written yet":            {gen: 2, finished: 2, want: sourceIdle},
		"the next generation after an end":              {gen: 3, last: done(2, true), finished: 2, want: sourceStart},
		"running in status, not here: a restart cut it": {gen: 2, current: 2, want: sourceInterrupted},
		"running in status, ended here: no report":      {gen: 2, current: 2, finished: 2, want: sourceIdle},
		"cut off, then a newer generation asked":        {gen: 3, current: 2, want: sourceInterrupted},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			ma := &agentv1alpha1.MountAssignment{Spec: agentv1alpha1.MountAssignmentSpec{SyncGeneration: tc.gen},
				Status: agentv1alpha1.MountAssignmentStatus{LastSync: tc.last}}
			if tc.current != 0 {
				ma.Status.CurrentSync = &agentv1alpha1.SyncProgress{Generation: tc.current}
			}
			assert.Equal(t, tc.want, decideSource(ma, tc.running, tc.finished))
		})
	}
}

func TestRecordSourceEnd(t *testing.T) {
	ma := &agentv1alpha1.MountAssignment{Status: agentv1alpha1.MountAssignmentStatus{
		Phase: agentv1alpha1.PhaseTransferring, MountPath: "/p", CurrentSync: &agentv1alpha1.SyncProgress{Generation: 4}}}
	recordSourceEnd(ma, &agentv1alpha1.SyncResult{Generation: 4, Succeeded: true})
	assert.Equal(t, agentv1alpha1.PhaseCompleted, ma.Status.Phase)
	assert.Nil(t, ma.Status.CurrentSync)
	assert.Empty(t, ma.Status.MountPath, "unmounted after every sync")
	assert.Equal(t, agentv1alpha1.ReasonSyncSucceeded, ma.Status.Conditions[0].Reason)

	recordSourceEnd(ma, &agentv1alpha1.SyncResult{Generation: 5, Error: "connection lost"})
	assert.Equal(t, agentv1alpha1.PhaseFailed, ma.Status.Phase)
	assert.Equal(t, int64(5), ma.Status.LastSync.Generation)
	assert.Contains(t, ma.Status.Conditions[0].Message, "sync 5 failed: connection lost")
}
