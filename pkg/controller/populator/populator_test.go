package populator

import (
	"testing"

	"github.com/stretchr/testify/assert"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
)

func TestDecide(t *testing.T) {
	claim := func(volume string, ann map[string]string) *corev1.PersistentVolumeClaim {
		return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "restore", Namespace: "app", UID: "u1", Annotations: ann},
			Spec: corev1.PersistentVolumeClaimSpec{VolumeName: volume, DataSourceRef: &corev1.TypedObjectReference{
				APIGroup: ptr.To("volsync.backube"), Kind: "ReplicationDestination", Name: "rd"}}}
	}
	rd := &volsyncv1alpha1.ReplicationDestination{}
	withImage := &volsyncv1alpha1.ReplicationDestination{Status: volsyncv1alpha1.ReplicationDestinationStatus{
		LatestImage: &corev1.TypedLocalObjectReference{APIGroup: ptr.To("snapshot.storage.k8s.io"), Kind: "VolumeSnapshot", Name: "img"}}}
	wffc := &storagev1.StorageClass{VolumeBindingMode: ptr.To(storagev1.VolumeBindingWaitForFirstConsumer)}
	prime := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "vs-prime-u1"},
		Spec: corev1.PersistentVolumeClaimSpec{DataSource: &corev1.TypedLocalObjectReference{Kind: "VolumeSnapshot", Name: "img"}}}
	bound := prime.DeepCopy()
	bound.Status.Phase, bound.Spec.VolumeName = corev1.ClaimBound, "pv1"
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv1"}, Spec: corev1.PersistentVolumeSpec{ClaimRef: &corev1.ObjectReference{UID: "prime-uid"}}}
	handed := pv.DeepCopy()
	handed.Spec.ClaimRef = &corev1.ObjectReference{UID: "u1"}
	for name, tc := range map[string]struct {
		in   Input
		want Decision
	}{
		"no destination":                     {Input{Claim: claim("", nil)}, Decision{Message: "waiting for ReplicationDestination rd to exist"}},
		"no image yet":                       {Input{Claim: claim("", nil), RD: rd}, Decision{Message: "waiting for ReplicationDestination rd's first latestImage"}},
		"first consumer not known":           {Input{Claim: claim("", nil), RD: withImage, Class: wffc}, Decision{Message: "waiting for a pod to use the claim: its storage class binds volumes on first consumer"}},
		"first consumer known":               {Input{Claim: claim("", map[string]string{annSelectedNode: "n1"}), RD: withImage, Class: wffc}, Decision{Action: CreatePrime}},
		"an image: restore it":               {Input{Claim: claim("", nil), RD: withImage}, Decision{Action: CreatePrime}},
		"restoring":                          {Input{Claim: claim("", nil), RD: withImage, Prime: prime}, Decision{Message: "restoring VolumeSnapshot img into claim vs-prime-u1"}},
		"restored: hand it over":             {Input{Claim: claim("", nil), RD: withImage, Prime: bound, PrimePV: pv}, Decision{Action: Rebind}},
		"handed over":                        {Input{Claim: claim("", nil), RD: withImage, Prime: bound, PrimePV: handed}, Decision{Message: "waiting for Kubernetes to bind volume pv1 to the claim"}},
		"bound: the prime goes":              {Input{Claim: claim("pv1", nil), RD: withImage, Prime: bound, PrimePV: handed}, Decision{Action: DeletePrime}},
		"done":                               {Input{Claim: claim("pv1", nil), RD: withImage}, Decision{Action: Done}},
		"done, even if the destination went": {Input{Claim: claim("pv1", nil)}, Decision{Action: Done}},
	} {
		t.Run(name, func(t *testing.T) { assert.Equal(t, tc.want, Decide(tc.in)) })
	}
}

func TestPrime(t *testing.T) {
	claim := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "restore", Namespace: "app", UID: "u1",
		Annotations: map[string]string{annSelectedNode: "n1", "other": "x"}},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To("fast")}}
	rd := &volsyncv1alpha1.ReplicationDestination{Status: volsyncv1alpha1.ReplicationDestinationStatus{
		LatestImage: &corev1.TypedLocalObjectReference{APIGroup: ptr.To("snapshot.storage.k8s.io"), Kind: "VolumeSnapshot", Name: "img"}}}
	p := Prime(claim, rd)
	assert.Equal(t, "vs-prime-u1", p.Name)
	assert.Equal(t, "app", p.Namespace)
	assert.Equal(t, map[string]string{annSelectedNode: "n1"}, p.Annotations, "provisioned on the node the scheduler chose")
	assert.Equal(t, "u1", p.Labels[LabelFor])
	assert.Equal(t, ptr.To("fast"), p.Spec.StorageClassName)
	assert.Equal(t, &corev1.TypedLocalObjectReference{APIGroup: ptr.To("snapshot.storage.k8s.io"), Kind: "VolumeSnapshot", Name: "img"}, p.Spec.DataSource)
}

// TestWaitingFor: only an unbound claim that names a ReplicationDestination
// is indexed, under the destination's name.
func TestWaitingFor(t *testing.T) {
	ref := func(group, kind string) *corev1.TypedObjectReference {
		return &corev1.TypedObjectReference{APIGroup: ptr.To(group), Kind: kind, Name: "rd"}
	}
	for _, tc := range []struct {
		name   string
		ref    *corev1.TypedObjectReference
		volume string
		want   []string
	}{
		{"waiting", ref("volsync.backube", "ReplicationDestination"), "", []string{"rd"}},
		{"filled", ref("volsync.backube", "ReplicationDestination"), "pv1", nil},
		{"another kind", ref("snapshot.storage.k8s.io", "VolumeSnapshot"), "", nil},
		{"no source", nil, "", nil},
	} {
		pvc := &corev1.PersistentVolumeClaim{Spec: corev1.PersistentVolumeClaimSpec{DataSourceRef: tc.ref, VolumeName: tc.volume}}
		assert.Equal(t, tc.want, waitingFor(pvc), tc.name)
	}
}
