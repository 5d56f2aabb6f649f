package source

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
)

func TestOutcome(t *testing.T) {
	ma := func(phase agentv1alpha1.Phase, cs *agentv1alpha1.SyncProgress, last *agentv1alpha1.SyncResult) *agentv1alpha1.MountAssignment {
		return &agentv1alpha1.MountAssignment{Spec: agentv1alpha1.MountAssignmentSpec{NodeName: "n1", SyncGeneration: 1},
			Status: agentv1alpha1.MountAssignmentStatus{Phase: phase, CurrentSync: cs, LastSync: last}}
	}
	cases := map[string]struct {
		ma              *agentv1alpha1.MountAssignment
		done, succeeded bool
		logs, waiting   string
		bytes           int64
	}{
		"not started": {ma: ma(agentv1alpha1.PhasePending, nil, nil), waiting: "waiting for the agent on node n1 to start"},
		"queued":      {ma: ma(agentv1alpha1.PhaseQueued, nil, nil), waiting: "queued on node n1"},
		"sending":     {ma: ma(agentv1alpha1.PhaseTransferring, &agentv1alpha1.SyncProgress{Generation: 1, BytesDone: 4096, FilesDone: 3, Attempt: 2}, nil), waiting: "4096 bytes, 3 files so far (try 2)", bytes: 4096},
		"succeeded":   {ma: ma(agentv1alpha1.PhaseCompleted, nil, &agentv1alpha1.SyncResult{Generation: 1, Succeeded: true, Summary: "Number of files: 3"}), done: true, succeeded: true, logs: "Number of files: 3"},
		"failed":      {ma: ma(agentv1alpha1.PhaseFailed, nil, &agentv1alpha1.SyncResult{Generation: 1, Error: "rsync exited 23", Summary: "sent 0 bytes"}), done: true, logs: "rsync exited 23\nsent 0 bytes"},
		"agent refuses": {ma: func() *agentv1alpha1.MountAssignment {
			m := ma(agentv1alpha1.PhaseRefused, nil, nil)
			m.Status.Conditions = []metav1.Condition{{Type: agentv1alpha1.ConditionReady, Message: "claim is not owned"}}
			return m
		}(), waiting: "the agent on node n1: claim is not owned"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			res := outcome(tc.ma)
			assert.Equal(t, tc.done, res.Done)
			assert.Equal(t, tc.succeeded, res.Succeeded)
			assert.Contains(t, res.Logs, tc.logs)
			assert.Contains(t, res.Waiting, tc.waiting)
			if tc.bytes > 0 {
				assert.Equal(t, tc.bytes, res.Progress.BytesDone)
				assert.Equal(t, "n1", res.Progress.Node)
			}
		})
	}
}

func TestCopyClaim(t *testing.T) {
	src := &corev1.PersistentVolumeClaim{Spec: corev1.PersistentVolumeClaimSpec{
		AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, StorageClassName: ptr.To("fast")}}
	size := resource.MustParse("5Gi")
	clone := &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: "data"}
	rs := &volsyncv1alpha1.ReplicationSource{ObjectMeta: metav1.ObjectMeta{Namespace: "ns"},
		Spec: volsyncv1alpha1.ReplicationSourceSpec{Rsync: &volsyncv1alpha1.ReplicationSourceRsyncSpec{}}}
	c := copyClaim(rs, src, "volsync-rs-src", clone, &size)
	assert.Equal(t, "fast", *c.Spec.StorageClassName, "the source's class by default")
	assert.Equal(t, src.Spec.AccessModes, c.Spec.AccessModes)
	assert.Equal(t, "5Gi", ptr.To(c.Spec.Resources.Requests[corev1.ResourceStorage]).String())
	assert.Equal(t, clone, c.Spec.DataSource)

	rs.Spec.Rsync.StorageClassName = ptr.To("cheap")
	rs.Spec.Rsync.Capacity = ptr.To(resource.MustParse("8Gi"))
	rs.Spec.Rsync.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany}
	c = copyClaim(rs, src, "volsync-rs-src", clone, &size)
	assert.Equal(t, "cheap", *c.Spec.StorageClassName, "overridden")
	assert.Equal(t, "8Gi", ptr.To(c.Spec.Resources.Requests[corev1.ResourceStorage]).String())
	assert.Equal(t, []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany}, c.Spec.AccessModes)
}

// TestSourceRole: the user's settings reach the agent: VolSync's defaults
// for what the spec leaves out, the compression and bandwidth annotations;
// a bad bandwidth annotation is the user's to fix.
func TestSourceRole(t *testing.T) {
	keys := agentv1alpha1.SecretReference{Namespace: "ferry-system", Name: "rs-keys"}
	rs := &volsyncv1alpha1.ReplicationSource{Spec: volsyncv1alpha1.ReplicationSourceSpec{
		Rsync: &volsyncv1alpha1.ReplicationSourceRsyncSpec{Address: ptr.To("10.0.0.9")}}}
	role, err := sourceRole(rs, keys, true)
	require.NoError(t, err)
	assert.Equal(t, &agentv1alpha1.SourceRole{Address: "10.0.0.9", Port: 22, User: "root", Path: "/", KeySecret: keys, Privileged: true}, role)

	rs.Annotations = map[string]string{volsyncv1alpha1.CompressionAnnotation: "lz4", volsyncv1alpha1.BandwidthLimitAnnotation: "10Mi"}
	rs.Spec.Rsync.Port, rs.Spec.Rsync.SSHUser, rs.Spec.Rsync.Path = ptr.To(int32(2022)), ptr.To("backup"), ptr.To("/data")
	role, err = sourceRole(rs, keys, false)
	require.NoError(t, err)
	assert.Equal(t, &agentv1alpha1.SourceRole{Address: "10.0.0.9", Port: 2022, User: "backup", Path: "/data", KeySecret: keys,
		Compression: "lz4", BandwidthLimit: 10 << 20}, role)

	rs.Annotations[volsyncv1alpha1.BandwidthLimitAnnotation] = "fast"
	_, err = sourceRole(rs, keys, false)
	require.ErrorContains(t, err, `annotation ferrysync.io/bandwidth-limit: "fast" is not a rate`)
}
