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
	testenv.NeedRoot(t) // skips in -short: it starts a cluster
	ctx := context.Background()
	c, err := cluster.Start(ctx, cluster.Options{Nodes: []string{"node-a"}, Log: testr.New(t)})
	require.NoError(t, err)
	defer func() {
		if t.Failed() {
			t.Log(c.Logs(40))
		}
		assert.NoError(t, c.Stop())
	}()
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
