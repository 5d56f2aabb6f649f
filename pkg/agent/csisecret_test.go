package agent

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
)

// TestCSISecret: the agent takes a PV's CSI node Secret only from the
// controller's copy in Ferry's namespace, and only a copy that says it
// copies the very Secret the live PV names; the Secret itself, in the
// PV's namespace, is never read (the agent may not).
func TestCSISecret(t *testing.T) {
	scheme := runtime.NewScheme()
	require.NoError(t, clientgoscheme.AddToScheme(scheme))
	ma := &agentv1alpha1.MountAssignment{ObjectMeta: metav1.ObjectMeta{Namespace: "ferry-system", Name: "rd-1"},
		Spec: agentv1alpha1.MountAssignmentSpec{Volume: agentv1alpha1.Volume{PersistentVolumeName: "pv-1"}}}
	copyOf := func(name, of string, data string) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ferry-system", Name: name,
			Annotations: map[string]string{agentv1alpha1.CSISecretAnnotation: of}}, Data: map[string][]byte{"userKey": []byte(data)}}
	}
	api := fake.NewClientBuilder().WithScheme(scheme).WithObjects(
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ceph", Name: "stage"}, Data: map[string][]byte{"userKey": []byte("original")}},
		copyOf("rd-1-csi-stage", "ceph/stage", "copied"),
		copyOf("rd-1-csi-publish", "ceph/other", "someone else's"),
	).Build()
	n := &node{cfg: Config{Namespace: "ferry-system"}, api: api}
	ctx := context.Background()

	got, err := n.csiSecret(ctx, ma, agentv1alpha1.CSIStageSecret, &corev1.SecretReference{Namespace: "ceph", Name: "stage"})
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"userKey": "copied"}, got, "the controller's copy, not the Secret itself")

	_, err = n.csiSecret(ctx, ma, agentv1alpha1.CSIPublishSecret, &corev1.SecretReference{Namespace: "ceph", Name: "publish"})
	assert.ErrorContains(t, err, `copies "ceph/other", not the publish Secret ceph/publish that PersistentVolume pv-1 names`)

	other := ma.DeepCopy()
	other.Name = "rd-2"
	_, err = n.csiSecret(ctx, other, agentv1alpha1.CSIStageSecret, &corev1.SecretReference{Namespace: "ceph", Name: "stage"})
	assert.ErrorContains(t, err, "read the controller's copy rd-2-csi-stage of the stage Secret ceph/stage")

	got, err = n.csiSecret(ctx, ma, agentv1alpha1.CSIStageSecret, nil)
	require.NoError(t, err)
	assert.Nil(t, got, "a PV without a reference has no secret")
}
