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

	bound := func(claim *corev1.PersistentVolumeClaim) *corev1.PersistentVolume {
		pv, err := c.Bind(ctx, claim)
		require.NoError(t, err)
		return pv
	}
	nodeA := c.Nodes[0]

	pv := bound(pvc("data", cluster.StorageClass, nil))
	require.Equal(t, cluster.DriverName, pv.Spec.CSI.Driver)
	target, unmount, err := cluster.MountVolume(ctx, nodeA.Volume(cluster.DriverName, pv.Spec.CSI.VolumeHandle), work)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(target, "hello"), []byte("replicate me"), 0o644))
	require.NoError(t, unmount())

	require.NoError(t, c.Snapshot(ctx, "default", "snap", "data"))

	for _, claim := range []*corev1.PersistentVolumeClaim{
		pvc("restored", cluster.StorageClass, &corev1.TypedLocalObjectReference{
			APIGroup: ptr.To("snapshot.storage.k8s.io"), Kind: "VolumeSnapshot", Name: "snap"}),
		pvc("clone", cluster.StorageClass, &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: "data"}),
	} {
		name := claim.Name
		pv := bound(claim)
		m := nodeA.Volume(cluster.DriverName, pv.Spec.CSI.VolumeHandle)
		m.ReadOnly = true
		target, unmount, err := cluster.MountVolume(ctx, m, work)
		require.NoError(t, err, name)
		got, err := os.ReadFile(filepath.Join(target, "hello"))
		require.NoError(t, err, name)
		assert.Equal(t, "replicate me", string(got), name)
		require.NoError(t, unmount())
	}

	apv := bound(pvc("attached", cluster.AttachStorageClass, nil))
	va := &storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: "va-attached"}, Spec: storagev1.VolumeAttachmentSpec{
		Attacher: cluster.AttachDriverName, NodeName: nodeA.Name,
		Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: ptr.To(apv.Name)}}}
	require.NoError(t, k.Create(ctx, va))
	testenv.Eventually(t, "VolumeAttachment attached", 60*time.Second, func() bool {
		return k.Get(ctx, client.ObjectKeyFromObject(va), va) == nil && va.Status.Attached
	})
	am := nodeA.Volume(cluster.AttachDriverName, apv.Spec.CSI.VolumeHandle)
	am.PublishContext = va.Status.AttachmentMetadata
	target, unmount, err = cluster.MountVolume(ctx, am, work)
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
