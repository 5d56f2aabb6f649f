package v1alpha1_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/utils/ptr"

	agentv1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
)

func TestSyncPredicates(t *testing.T) {
	cases := map[string]struct {
		gen            int64
		last           *agentv1.SyncResult
		ended, holding bool
	}{
		"nothing ran yet":                 {gen: 1},
		"nothing asked for":               {gen: 0, ended: false},
		"the asked sync succeeded: held":  {gen: 2, last: &agentv1.SyncResult{Generation: 2, Succeeded: true}, ended: true, holding: true},
		"the asked sync failed: not held": {gen: 2, last: &agentv1.SyncResult{Generation: 2}, ended: true},
		"raised past the last: accepting": {gen: 3, last: &agentv1.SyncResult{Generation: 2, Succeeded: true}},
		"a result newer than asked":       {gen: 2, last: &agentv1.SyncResult{Generation: 3, Succeeded: true}, ended: true, holding: true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			ma := &agentv1.MountAssignment{Spec: agentv1.MountAssignmentSpec{SyncGeneration: tc.gen},
				Status: agentv1.MountAssignmentStatus{LastSync: tc.last}}
			assert.Equal(t, tc.ended, ma.Ended(), "ended")
			assert.Equal(t, tc.holding, ma.Holding(), "holding")
		})
	}
}

func TestAttachRequired(t *testing.T) {
	assert.True(t, agentv1.AttachRequired(nil), "no CSIDriver object: Kubernetes assumes attach")
	assert.True(t, agentv1.AttachRequired(&storagev1.CSIDriver{}), "unset: attach")
	assert.True(t, agentv1.AttachRequired(&storagev1.CSIDriver{Spec: storagev1.CSIDriverSpec{AttachRequired: ptr.To(true)}}))
	assert.False(t, agentv1.AttachRequired(&storagev1.CSIDriver{Spec: storagev1.CSIDriverSpec{AttachRequired: ptr.To(false)}}))
}
