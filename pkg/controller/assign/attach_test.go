package assign_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/assign"
	"github.com/ferrysync/ferry/test/cluster"
	"github.com/ferrysync/ferry/test/harness"
)

// TestAttachAcrossControllerManagerRestart finds out what the attach-detach
// controller in a real kube-controller-manager does with attachments that no
// pod needs when it restarts, and shows that Ferry's attachment survives it
// and comes back when it is detached anyway (that the agent then publishes
// the volume anew, data intact, is test/nodeagent's re-attach case):
//
//   - an attachment named as kubelet's attach-detach controller names its
//     own (no pod needs it) is deleted within seconds of the restart, once
//     the node reports its status;
//   - Ferry's attachment of another volume is still there, the same object,
//     attached;
//   - deleted by hand (any detach), it is attached again with a new UID;
//     Detach removes it.
func TestAttachAcrossControllerManagerRestart(t *testing.T) {
	ctx := context.Background()
	c := oneNodeCluster(t)
	node := c.Nodes[0]
	exists := func(name string, uid string) bool {
		now := &storagev1.VolumeAttachment{}
		err := c.Client.Get(ctx, client.ObjectKey{Name: name}, now)
		if apierrors.IsNotFound(err) {
			return false
		}
		require.NoError(t, err)
		return string(now.UID) == uid && now.DeletionTimestamp == nil && now.Status.Attached
	}

	// An attachment as the attach-detach controller would have made for a
	// pod that has gone, of its naming.
	other := bind(t, c, "attached-other")
	kubeletNamed := &storagev1.VolumeAttachment{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("csi-%x", sha256.Sum256([]byte(other.Spec.CSI.VolumeHandle+other.Spec.CSI.Driver+node.Name)))},
		Spec: storagev1.VolumeAttachmentSpec{Attacher: other.Spec.CSI.Driver, NodeName: node.Name,
			Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &other.Name}}}
	require.NoError(t, c.Client.Create(ctx, kubeletNamed))
	testenv.Eventually(t, "the kubelet-named attachment to attach", time.Minute, func() bool {
		return exists(kubeletNamed.Name, string(kubeletNamed.UID))
	})

	pv := bind(t, c, "attached")
	v := agentv1alpha1.Volume{PersistentVolumeName: pv.Name, Driver: pv.Spec.CSI.Driver, VolumeHandle: pv.Spec.CSI.VolumeHandle}
	a := harness.Attached(t, c.Client, v, node.Name)
	require.Equal(t, assign.AttachmentName(pv.Spec.CSI.Driver, pv.Spec.CSI.VolumeHandle, node.Name), a.Name)

	require.NoError(t, c.RestartControllerManager())
	// Kubelet keeps reporting the node's status; neither volume is among
	// its pods' volumes in use.
	testenv.Eventually(t, "the attach-detach controller to detach the attachment of its naming", time.Minute, func() bool {
		require.NoError(t, c.ReportNodeStatus(ctx, node.Name))
		return !exists(kubeletNamed.Name, string(kubeletNamed.UID))
	})
	assert.True(t, exists(a.Name, a.UID), "Ferry's attachment is left alone")

	// Detached anyway: attached again, a new object.
	require.NoError(t, assign.Detach(ctx, c.Client, pv.Name))
	again := harness.Attached(t, c.Client, v, node.Name)
	assert.NotEqual(t, a.UID, again.UID, "a new attachment")
	assert.True(t, exists(again.Name, again.UID))

	require.NoError(t, assign.Detach(ctx, c.Client, pv.Name))
	testenv.Eventually(t, "Ferry's attachment to go", time.Minute, func() bool {
		return apierrors.IsNotFound(c.Client.Get(ctx, client.ObjectKey{Name: again.Name}, &storagev1.VolumeAttachment{}))
	})
}

// bind creates a claim of the attach-required class and returns its PV.
func bind(t *testing.T, c *cluster.Cluster, name string) *corev1.PersistentVolume {
	t.Helper()
	pv, err := c.Bind(context.Background(), &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To(cluster.AttachStorageClass),
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("32Mi")}},
		},
	})
	require.NoError(t, err)
	return pv
}

// TestAttachmentSharedWithKubelet: a node has one attachment per volume,
// shared with kubelet's, and Ferry never detaches a disk under a pod. With
// a real attach-detach controller and external-attacher (the ebs profile:
// its ControllerUnpublishVolume takes the volume off the node, after which
// NodeStageVolume there fails):
//
//   - Ferry attaches first (its own attachment); a pod scheduled to the
//     node gets kubelet's attachment beside it; Ferry lets go: its
//     attachment is handed over, not detached, and the pod's node can still
//     stage the volume;
//   - with kubelet's attachment there, Ferry uses it and makes none.
func TestAttachmentSharedWithKubelet(t *testing.T) {
	ctx := context.Background()
	c := oneNodeCluster(t)
	node := c.Nodes[0]
	pv := bind(t, c, "shared")
	v := agentv1alpha1.Volume{PersistentVolumeName: pv.Name, Driver: pv.Spec.CSI.Driver, VolumeHandle: pv.Spec.CSI.VolumeHandle}
	ours := harness.Attached(t, c.Client, v, node.Name)
	require.Equal(t, assign.AttachmentName(v.Driver, v.VolumeHandle, node.Name), ours.Name)

	// The application's pod, scheduled to the node: the attach-detach
	// controller attaches the volume for it, under kubelet's name.
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "app"}, Spec: corev1.PodSpec{NodeName: node.Name,
		Containers: []corev1.Container{{Name: "app", Image: "app"}},
		Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "shared"}}}}}}
	require.NoError(t, c.Client.Create(ctx, pod))
	kubelets := &storagev1.VolumeAttachment{}
	kubeletName := assign.KubeletAttachmentName(v.Driver, v.VolumeHandle, node.Name)
	testenv.Eventually(t, "kubelet's attachment for the pod", time.Minute, func() bool {
		return c.Client.Get(ctx, client.ObjectKey{Name: kubeletName}, kubelets) == nil && kubelets.Status.Attached
	})

	require.NoError(t, assign.Detach(ctx, c.Client, pv.Name))
	testenv.Eventually(t, "Ferry's attachment to go", time.Minute, func() bool {
		return apierrors.IsNotFound(c.Client.Get(ctx, client.ObjectKey{Name: ours.Name}, &storagev1.VolumeAttachment{}))
	})
	require.NoError(t, c.Client.Get(ctx, client.ObjectKey{Name: kubeletName}, kubelets))
	assert.True(t, kubelets.Status.Attached && kubelets.DeletionTimestamp == nil, "kubelet's attachment stays")
	m := node.Volume(v.Driver, v.VolumeHandle)
	m.PublishContext = kubelets.Status.AttachmentMetadata
	_, unmount, err := cluster.MountVolume(ctx, m, t.TempDir())
	require.NoError(t, err, "the volume is still on the node for the pod")
	require.NoError(t, unmount())

	again := harness.Attached(t, c.Client, v, node.Name)
	assert.Equal(t, kubeletName, again.Name, "Ferry uses kubelet's attachment")
	assert.Equal(t, string(kubelets.UID), again.UID)
	list := &storagev1.VolumeAttachmentList{}
	require.NoError(t, c.Client.List(ctx, list))
	assert.Len(t, list.Items, 1, "one attachment of the volume to the node")
}

// oneNodeCluster starts a cluster of one simulated node for the test
// (skipped in -short) and stops it after, with its logs if the test failed.
func oneNodeCluster(t *testing.T) *cluster.Cluster {
	t.Helper()
	testenv.NeedRoot(t)
	c, err := cluster.Start(context.Background(), cluster.Options{Nodes: []string{"node-a"}, Log: testr.New(t)})
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(c.Logs(40))
		}
		assert.NoError(t, c.Stop())
	})
	return c
}
