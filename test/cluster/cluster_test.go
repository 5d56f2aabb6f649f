package cluster_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/test/cluster"
)

func pvc(name, class string, source *corev1.TypedLocalObjectReference) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To(class),
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("64Mi")}},
			DataSource:       source,
		},
	}
}

// TestStorage: in a started cluster, the real external-provisioner binds a
// PVC, the real snapshot-controller and csi-snapshotter make a VolumeSnapshot
// ready, a PVC restored from it and a clone carry the source's data, and the
// real external-attacher attaches a VolumeAttachment. Teardown leaves no
// mount or loop device behind.
func TestStorage(t *testing.T) {
	testenv.NeedRoot(t)
	ctx := context.Background()
	c, err := cluster.Start(ctx, cluster.Options{Log: testr.New(t)})
	require.NoError(t, err)
	dir := c.Dir
	stopped := false
	defer func() {
		if t.Failed() {
			t.Log(c.Logs(30))
		}
		if !stopped {
			_ = c.Stop()
		}
	}()
	k := c.Client
	work := t.TempDir()

	bound := func(name string) *corev1.PersistentVolume {
		claim := &corev1.PersistentVolumeClaim{}
		testenv.Eventually(t, "PVC "+name+" bound", 60*time.Second, func() bool {
			return k.Get(ctx, client.ObjectKey{Namespace: "default", Name: name}, claim) == nil && claim.Status.Phase == corev1.ClaimBound
		})
		pv := &corev1.PersistentVolume{}
		require.NoError(t, k.Get(ctx, client.ObjectKey{Name: claim.Spec.VolumeName}, pv))
		return pv
	}
	nodeA := c.Nodes[0]

	require.NoError(t, k.Create(ctx, pvc("data", cluster.StorageClass, nil)))
	pv := bound("data")
	require.Equal(t, cluster.DriverName, pv.Spec.CSI.Driver)
	target, unmount, err := cluster.MountVolume(ctx, nodeA.PluginSocket(cluster.DriverName), pv.Spec.CSI.VolumeHandle, work, false, nil)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(target, "hello"), []byte("replicate me"), 0o644))
	require.NoError(t, unmount())

	snap := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
		"metadata": map[string]any{"name": "snap", "namespace": "default"},
		"spec": map[string]any{"volumeSnapshotClassName": cluster.SnapshotClass,
			"source": map[string]any{"persistentVolumeClaimName": "data"}},
	}}
	require.NoError(t, k.Create(ctx, snap))
	testenv.Eventually(t, "VolumeSnapshot ready", 60*time.Second, func() bool {
		if k.Get(ctx, client.ObjectKeyFromObject(snap), snap) != nil {
			return false
		}
		ready, _, _ := unstructured.NestedBool(snap.Object, "status", "readyToUse")
		return ready
	})

	require.NoError(t, k.Create(ctx, pvc("restored", cluster.StorageClass, &corev1.TypedLocalObjectReference{
		APIGroup: ptr.To("snapshot.storage.k8s.io"), Kind: "VolumeSnapshot", Name: "snap"})))
	require.NoError(t, k.Create(ctx, pvc("clone", cluster.StorageClass, &corev1.TypedLocalObjectReference{
		Kind: "PersistentVolumeClaim", Name: "data"})))
	for _, name := range []string{"restored", "clone"} {
		pv := bound(name)
		target, unmount, err := cluster.MountVolume(ctx, nodeA.PluginSocket(cluster.DriverName), pv.Spec.CSI.VolumeHandle, work, true, nil)
		require.NoError(t, err, name)
		got, err := os.ReadFile(filepath.Join(target, "hello"))
		require.NoError(t, err, name)
		assert.Equal(t, "replicate me", string(got), name)
		require.NoError(t, unmount())
	}

	require.NoError(t, k.Create(ctx, pvc("attached", cluster.AttachStorageClass, nil)))
	apv := bound("attached")
	va := &storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: "va-attached"}, Spec: storagev1.VolumeAttachmentSpec{
		Attacher: cluster.AttachDriverName, NodeName: nodeA.Name,
		Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: ptr.To(apv.Name)}}}
	require.NoError(t, k.Create(ctx, va))
	testenv.Eventually(t, "VolumeAttachment attached", 60*time.Second, func() bool {
		return k.Get(ctx, client.ObjectKeyFromObject(va), va) == nil && va.Status.Attached
	})
	target, unmount, err = cluster.MountVolume(ctx, nodeA.PluginSocket(cluster.AttachDriverName), apv.Spec.CSI.VolumeHandle,
		work, false, va.Status.AttachmentMetadata)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(target, "f"), []byte("x"), 0o644))
	require.NoError(t, unmount())

	stopped = true
	require.NoError(t, c.Stop())
	testenv.NoLoopDevices(t, dir)
	mi, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	assert.NotContains(t, string(mi), dir, "mounts left behind")
	assert.NoDirExists(t, dir)
}
