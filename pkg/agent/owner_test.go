package agent

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
)

// TestCheckOwner is the agent's refusal logic over objects (a fake reader
// is enough: no apiserver behaviour is involved); the end-to-end refusal is
// in test/nodeagent.
func TestCheckOwner(t *testing.T) {
	scheme := runtime.NewScheme()
	require.NoError(t, clientgoscheme.AddToScheme(scheme))
	require.NoError(t, volsyncv1alpha1.AddToScheme(scheme))
	rd := &volsyncv1alpha1.ReplicationDestination{ObjectMeta: metav1.ObjectMeta{Name: "rd", Namespace: "app", UID: "rd-uid"},
		Spec: volsyncv1alpha1.ReplicationDestinationSpec{Rsync: &volsyncv1alpha1.ReplicationDestinationRsyncSpec{}}}
	rs := &volsyncv1alpha1.ReplicationSource{ObjectMeta: metav1.ObjectMeta{Name: "rs", Namespace: "app", UID: "rs-uid"},
		Spec: volsyncv1alpha1.ReplicationSourceSpec{SourcePVC: "data"}}
	claim := func(name, pv string, owner string) *corev1.PersistentVolumeClaim {
		c := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "app", UID: types.UID("uid-" + name)},
			Spec: corev1.PersistentVolumeClaimSpec{VolumeName: pv}}
		if owner != "" {
			c.OwnerReferences = []metav1.OwnerReference{{Name: "x", UID: "rd-uid", Kind: owner, APIVersion: "volsync.backube/v1alpha1"}}
		}
		return c
	}
	volume := func(name, claimName string) *corev1.PersistentVolume {
		return &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PersistentVolumeSpec{ClaimRef: &corev1.ObjectReference{Namespace: "app", Name: claimName, UID: types.UID("uid-" + claimName)},
				PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: "d", VolumeHandle: "h-" + name}}}}
	}
	reader := fake.NewClientBuilder().WithScheme(scheme).WithObjects(rd, rs,
		claim("replica", "pv-replica", "ReplicationDestination"), volume("pv-replica", "replica"),
		claim("named", "pv-named", ""), volume("pv-named", "named"),
		claim("data", "pv-data", ""), volume("pv-data", "data"),
		claim("stray", "pv-stray", ""), volume("pv-stray", "stray"),
		claim("block", "pv-block", "ReplicationDestination"), func() *corev1.PersistentVolume {
			pv := volume("pv-block", "block")
			pv.Spec.VolumeMode = ptr.To(corev1.PersistentVolumeBlock)
			return pv
		}(),
	).Build()
	dest := func(pv, claim, uid string) *agentv1alpha1.MountAssignment {
		return &agentv1alpha1.MountAssignment{Spec: agentv1alpha1.MountAssignmentSpec{
			Owner:       agentv1alpha1.OwnerReference{Kind: "ReplicationDestination", Namespace: "app", Name: "rd", UID: uid},
			Volume:      agentv1alpha1.Volume{PersistentVolumeName: pv, Claim: claim, Driver: "d", VolumeHandle: "h-" + pv},
			Destination: &agentv1alpha1.DestinationRole{}}}
	}
	ctx := context.Background()

	_, err := checkOwner(ctx, reader, dest("pv-replica", "replica", "rd-uid"))
	assert.NoError(t, err, "owned through an ownerReference")

	rd.Spec.Rsync.DestinationPVC = ptr.To("named")
	require.NoError(t, reader.Update(ctx, rd))
	_, err = checkOwner(ctx, reader, dest("pv-named", "named", "rd-uid"))
	assert.NoError(t, err, "named as the destinationPVC")

	src := &agentv1alpha1.MountAssignment{Spec: agentv1alpha1.MountAssignmentSpec{
		Owner:  agentv1alpha1.OwnerReference{Kind: "ReplicationSource", Namespace: "app", Name: "rs", UID: "rs-uid"},
		Volume: agentv1alpha1.Volume{PersistentVolumeName: "pv-data", Claim: "data", Driver: "d", VolumeHandle: "h-pv-data"},
		Source: &agentv1alpha1.SourceRole{}}}
	_, err = checkOwner(ctx, reader, src)
	assert.NoError(t, err, "a Direct source: the CR's sourcePVC")

	for name, tc := range map[string]struct {
		ma   *agentv1alpha1.MountAssignment
		want string
	}{
		"not owned":     {dest("pv-stray", "stray", "rd-uid"), "neither owned nor named"},
		"another claim": {dest("pv-replica", "stray", "rd-uid"), "is not bound to claim app/stray"},
		"CR re-created": {dest("pv-replica", "replica", "old-uid"), "deleted and created again"},
		"no such PV":    {dest("pv-none", "replica", "rd-uid"), "not found"},
		"smuggled handle": {func() *agentv1alpha1.MountAssignment {
			m := dest("pv-replica", "replica", "rd-uid")
			m.Spec.Volume.VolumeHandle = "h-pv-data"
			return m
		}(), "is not CSI volume h-pv-data"},
		"role of other CR": {func() *agentv1alpha1.MountAssignment {
			m := src.DeepCopy()
			m.Spec.Owner.Kind = "ReplicationDestination"
			return m
		}(), "must have the destination role"},
		"unknown owner": {func() *agentv1alpha1.MountAssignment { m := src.DeepCopy(); m.Spec.Owner.Kind = "Pod"; return m }(), "is not a Ferry CR"},
	} {
		_, err := checkOwner(ctx, reader, tc.ma)
		require.Error(t, err, name)
		assert.True(t, isRefusal(err), "%s: a refusal, not a retry: %v", name, err)
		assert.Contains(t, err.Error(), tc.want, name)
	}
}
