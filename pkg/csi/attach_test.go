package csi

import (
	"github.com/ferrysync/ferry/pkg/controller/assign"

	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/test/cluster"
)

// TestAttachAcrossControllerManagerRestart finds out what the attach-detach
// controller in a real kube-controller-manager does with attachments that no
// pod needs when it restarts, and shows that Ferry's attachment survives it
// and heals when it is detached anyway:
//
//   - an attachment named as kubelet's attach-detach controller names its
//     own (no pod needs it) is deleted, and the volume detached, within
//     seconds of the restart once the node reports its status;
//   - Ferry's attachment of another volume, published read-write with data
//     in it, is still there, the same object, attached;
//   - deleted by hand (any detach), it is attached again and the volume
//     published anew; the data written before is there and it takes writes.
func TestAttachAcrossControllerManagerRestart(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	node := c.Nodes[0]
	root := filepath.Join(node.KubeletDir, "plugins", "ferrysync.io", "attach")
	p := NewPublisher(root, node.KubeletDir, discard)
	defer p.Close()
	attach := func(pv *corev1.PersistentVolume) *storagev1.VolumeAttachment {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		va, err := assign.WaitAttached(wctx, c.Client, pv.Spec.CSI.Driver, pv.Spec.CSI.VolumeHandle, pv.Name, node.Name)
		require.NoError(t, err)
		return va
	}
	exists := func(va *storagev1.VolumeAttachment) bool {
		now := &storagev1.VolumeAttachment{}
		err := c.Client.Get(ctx, client.ObjectKeyFromObject(va), now)
		if apierrors.IsNotFound(err) {
			return false
		}
		require.NoError(t, err)
		return now.UID == va.UID && now.DeletionTimestamp == nil && now.Status.Attached
	}

	// An attachment as the attach-detach controller would have made for a
	// pod that has gone, of its naming.
	other := claim(t, c, "attached-other", cluster.AttachStorageClass, corev1.PersistentVolumeFilesystem, nil)
	kubeletNamed := &storagev1.VolumeAttachment{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("csi-%x", sha256.Sum256([]byte(other.Spec.CSI.VolumeHandle+other.Spec.CSI.Driver+node.Name)))},
		Spec: storagev1.VolumeAttachmentSpec{Attacher: other.Spec.CSI.Driver, NodeName: node.Name,
			Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &other.Name}}}
	require.NoError(t, c.Client.Create(ctx, kubeletNamed))
	testenv.Eventually(t, "the kubelet-named attachment to attach", time.Minute, func() bool { return exists(kubeletNamed) })

	pv := claim(t, c, "attached", cluster.AttachStorageClass, corev1.PersistentVolumeFilesystem, nil)
	publish := func(va *storagev1.VolumeAttachment) string {
		t.Helper()
		v := FromPersistentVolume(pv)
		var ok bool
		var err error
		v.PublishContext, ok, err = assign.Attached(va)
		require.NoError(t, err)
		require.True(t, ok)
		v.Attachment = string(va.UID)
		dir, err := p.Publish(ctx, pv.Name, v)
		require.NoError(t, err)
		return dir
	}
	va := attach(pv)
	require.Equal(t, assign.AttachmentName(pv.Spec.CSI.Driver, pv.Spec.CSI.VolumeHandle, node.Name), va.Name)
	dir := publish(va)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "before"), []byte("written before the restart"), 0o644))

	require.NoError(t, c.RestartControllerManager())
	// Kubelet keeps reporting the node's status; neither volume is among
	// its pods' volumes in use.
	testenv.Eventually(t, "the attach-detach controller to detach the attachment of its naming", time.Minute, func() bool {
		require.NoError(t, c.ReportNodeStatus(ctx, node.Name))
		return !exists(kubeletNamed)
	})
	assert.True(t, exists(va), "Ferry's attachment is left alone")

	// Detached anyway: Ferry attaches again and publishes anew.
	require.NoError(t, c.Client.Delete(ctx, va))
	again := attach(pv)
	require.NotEqual(t, va.UID, again.UID, "a new attachment")
	dir = publish(again)
	got, err := os.ReadFile(filepath.Join(dir, "before"))
	require.NoError(t, err)
	assert.Equal(t, "written before the restart", string(got))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "after"), []byte("x"), 0o644))

	require.NoError(t, p.Unpublish(ctx, pv.Name))
	require.NoError(t, assign.Detach(ctx, c.Client, pv.Name))
	testenv.Eventually(t, "Ferry's attachment to go", time.Minute, func() bool {
		return apierrors.IsNotFound(c.Client.Get(ctx, client.ObjectKeyFromObject(again), &storagev1.VolumeAttachment{}))
	})
	assertNothingLeft(t, c, root)
}
