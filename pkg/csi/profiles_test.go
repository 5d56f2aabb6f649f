package csi

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	csispec "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/pkg/kubelet"
	"github.com/ferrysync/ferry/pkg/mount"
	"github.com/ferrysync/ferry/test/cluster"
)

// TestProfiles publishes a volume of every strict driver profile the way
// the agent does, from the live PV and what the agent adds (stage secrets,
// the attachment's publish context), with DefaultRoot and kubelet's
// staging path: read-write and written, then read-only beside an
// application pod that kubelet mounted on the same node, whose writes the
// agent reads and whose mount stays when the agent lets go. The claims
// list ReadWriteOnce first and ReadOnlyMany after, so only kubelet's
// mapping of access modes (the first one) gets past a strict driver's
// refusal of multi-node modes. Nothing is left on the node afterwards.
func TestProfiles(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	node := c.Nodes[0]
	for _, d := range c.Drivers {
		t.Run(d.Profile.Name, func(t *testing.T) {
			modes := []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce, corev1.ReadOnlyMany}
			if d.Profile.AttachRequired {
				// external-attacher refuses a PV with both ("CSI does not
				// support ReadOnlyMany and ReadWriteOnce on the same
				// PersistentVolume").
				modes = modes[:1]
			}
			pv := claimWith(t, c, "profile-"+d.Profile.Name, d.StorageClasses[0], modes...)
			v := FromPersistentVolume(pv)
			v.StageSecrets = secretOf(t, c, pv.Spec.CSI.NodeStageSecretRef)
			if d.Profile.AttachRequired {
				v.PublishContext, v.Attachment = attach(t, c, pv, node.Name)
			}
			p := NewPublisher(node.KubeletDir, discard)
			defer p.Close()

			dir, err := p.Publish(ctx, pv.Name, v)
			require.NoError(t, err)
			assert.Equal(t, filepath.Join(DefaultRoot(node.KubeletDir), pv.Name, "mount"), dir)
			require.NoError(t, os.WriteFile(filepath.Join(dir, "hello"), []byte("from ferry"), 0o644))
			require.NoError(t, p.Unpublish(ctx, pv.Name))
			assertNothingLeft(t, c, node.KubeletDir)

			// An application pod on the node, mounted by kubelet (lvm-localpv
			// mounts a volume once: there Ferry lets go before a pod starts).
			var unmountPod func() error
			podMount := filepath.Join(node.KubeletDir, "pods", "0a1b-"+d.Profile.Name, "volumes", "kubernetes.io~csi", pv.Name, "mount")
			if !d.Profile.OneMount {
				pod := node.Volume(d.Name, v.Handle)
				pod.AsPod, pod.PublishContext, pod.StageSecrets = true, v.PublishContext, v.StageSecrets
				unmountPod, err = pod.At(ctx, podMount)
				require.NoError(t, err)
			}
			v.ReadOnly = true
			dir, err = p.Publish(ctx, pv.Name, v)
			require.NoError(t, err, "published beside the pod")
			got, err := os.ReadFile(filepath.Join(dir, "hello"))
			require.NoError(t, err)
			assert.Equal(t, "from ferry", string(got))
			if unmountPod != nil {
				require.NoError(t, os.WriteFile(filepath.Join(podMount, "app"), []byte("from the pod"), 0o644))
				got, err = os.ReadFile(filepath.Join(dir, "app"))
				require.NoError(t, err)
				assert.Equal(t, "from the pod", string(got), "one filesystem, staged once")
			}
			require.NoError(t, p.Unpublish(ctx, pv.Name))
			if unmountPod != nil {
				mounted, err := mount.IsMountPoint(podMount)
				require.NoError(t, err)
				assert.True(t, mounted, "the pod's mount stays")
				require.NoError(t, os.WriteFile(filepath.Join(podMount, "after"), []byte("still writing"), 0o644), "the pod still writes")
				require.NoError(t, unmountPod())
			}
			assertNothingLeft(t, c, node.KubeletDir)
		})
	}
}

// TestStagedOnce: the agent stages at kubelet's staging path, so a driver
// that keeps one staging path per volume (csi-driver-host-path's profile:
// a second path is refused) serves the agent and another user of the
// volume on the node alike; the agent, done first, leaves the volume staged
// for the other, who unstages it last.
func TestStagedOnce(t *testing.T) {
	c, node, pv, v, p := onDefaultDriver(t, "staged-once")
	ctx := context.Background()
	dir, err := p.Publish(ctx, pv.Name, v)
	require.NoError(t, err)
	rec, err := p.root.readRecord(pv.Name)
	require.NoError(t, err)
	assert.Equal(t, kubelet.StagingPath(node.KubeletDir, v.Driver, v.Handle), rec.StagingPath)

	kc := dialNode(t, node, v.Driver)
	_, err = kc.node.NodeStageVolume(ctx, &csispec.NodeStageVolumeRequest{VolumeId: v.Handle, StagingTargetPath: t.TempDir(),
		VolumeCapability: v.capability(kc.caps)})
	require.ErrorContains(t, err, "already staged at", "the driver keeps one staging path per volume")

	target, unmount, err := cluster.MountVolume(ctx, node.Volume(v.Driver, v.Handle), t.TempDir())
	require.NoError(t, err, "another user stages where the agent staged")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "shared"), []byte("x"), 0o644))
	require.NoError(t, p.Unpublish(ctx, pv.Name))
	_, err = os.Stat(filepath.Join(target, "shared"))
	require.NoError(t, err, "the other user's mount outlives the agent's")
	require.NoError(t, unmount())
	assertNothingLeft(t, c, node.KubeletDir)
}

// TestKubeletUnstagesBetweenStageAndPublish: kubelet may unstage the
// shared staging path between the agent's stage and publish (its pod left
// just then, and nothing of the agent's mounted from it yet: found on real
// nodes); csi-driver-host-path's profile then refuses the publish ("must be
// staged before publishing"), and the agent stages again.
func TestKubeletUnstagesBetweenStageAndPublish(t *testing.T) {
	c, node, pv, v, p := onDefaultDriver(t, "unstaged-between")
	ctx := context.Background()
	steps := p.publishSteps(pv.Name, v)
	require.Len(t, steps, 3)
	require.NoError(t, p.run(ctx, pv.Name, steps[:2]), "recorded and staged")
	kc := dialNode(t, node, v.Driver)
	_, err := kc.node.NodeUnstageVolume(ctx, &csispec.NodeUnstageVolumeRequest{VolumeId: v.Handle,
		StagingTargetPath: kubelet.StagingPath(node.KubeletDir, v.Driver, v.Handle)})
	require.NoError(t, err, "kubelet unstages")
	require.NoError(t, p.run(ctx, pv.Name, steps[2:]), "published, staged again")
	dir := p.root.target(pv.Name, false)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644))
	require.NoError(t, p.Unpublish(ctx, pv.Name))
	assertNothingLeft(t, c, node.KubeletDir)
}

// TestRecoverAVolumeTheDriverForgot: an agent that crashed with a volume
// published, whose volume was deleted before it started again, still takes
// it down at start, although csi-driver-host-path's profile answers
// NotFound for a volume it no longer knows (before, Recover failed on it at
// every start).
func TestRecoverAVolumeTheDriverForgot(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	node := c.Nodes[0]
	p := NewPublisher(node.KubeletDir, discard)
	defer p.Close()
	rec := record{Driver: cluster.DriverName, Handle: "vol-deleted-meanwhile", Staged: true,
		StagingPath: kubelet.StagingPath(node.KubeletDir, cluster.DriverName, "vol-deleted-meanwhile")}
	require.NoError(t, p.root.writeRecord("forgotten", rec))
	require.NoError(t, os.MkdirAll(rec.StagingPath, 0o750))
	require.NoError(t, os.MkdirAll(p.root.target("forgotten", false), 0o750))
	kc := dialNode(t, node, rec.Driver)
	_, err := kc.node.NodeUnpublishVolume(ctx, &csispec.NodeUnpublishVolumeRequest{VolumeId: rec.Handle, TargetPath: p.root.target("forgotten", false)})
	require.Equal(t, codes.NotFound, status.Code(err), "the driver does not know the volume")
	require.NoError(t, p.Recover(ctx, func(string) bool { return false }))
	assertNothingLeft(t, c, node.KubeletDir)
}

func TestKeepStaged(t *testing.T) {
	assert.Empty(t, keepStaged(false, nil))
	assert.Contains(t, keepStaged(true, nil), "kubelet staged it")
	assert.Contains(t, keepStaged(false, []string{"/var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/pv/mount"}), "still mounted from")
}

// onDefaultDriver is what a test of one volume of the default driver
// starts from: the cluster, its node, a bound claim's PV and Volume, and a
// Publisher at DefaultRoot closed when the test ends.
func onDefaultDriver(t *testing.T, claimName string) (*cluster.Cluster, cluster.Node, *corev1.PersistentVolume, Volume, *Publisher) {
	t.Helper()
	c := needCluster(t)
	pv := claim(t, c, claimName, cluster.StorageClass, corev1.PersistentVolumeFilesystem, nil)
	p := NewPublisher(c.Nodes[0].KubeletDir, discard)
	t.Cleanup(func() { _ = p.Close() })
	return c, c.Nodes[0], pv, FromPersistentVolume(pv), p
}

// dialNode connects to driver's node plugin on node, for the test's own
// calls, until the test ends.
func dialNode(t *testing.T, node cluster.Node, driver string) *Client {
	t.Helper()
	kc, err := Dial(context.Background(), node.PluginSocket(driver), DefaultCallTimeout, discard)
	require.NoError(t, err)
	t.Cleanup(func() { _ = kc.Close() })
	return kc
}

// claimWith is claim with access modes of the test's choice.
func claimWith(t *testing.T, c *cluster.Cluster, name, class string, modes ...corev1.PersistentVolumeAccessMode) *corev1.PersistentVolume {
	t.Helper()
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: modes, StorageClassName: ptr.To(class),
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size32Mi}}}}
	pv, err := c.Bind(context.Background(), pvc)
	require.NoError(t, err)
	return pv
}

// secretOf reads a CSI secret as the agent does (nil for no reference).
func secretOf(t *testing.T, c *cluster.Cluster, ref *corev1.SecretReference) map[string]string {
	t.Helper()
	if ref == nil {
		return nil
	}
	sec := &corev1.Secret{}
	require.NoError(t, c.Client.Get(context.Background(), client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, sec))
	out := map[string]string{}
	for k, v := range sec.Data {
		out[k] = string(v)
	}
	return out
}

// attach attaches pv to node through the cluster's external-attacher, as
// the controller does for the agent, and detaches it when the test ends.
func attach(t *testing.T, c *cluster.Cluster, pv *corev1.PersistentVolume, node string) (map[string]string, string) {
	t.Helper()
	ctx := context.Background()
	va := &storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: "test-" + pv.Name}, Spec: storagev1.VolumeAttachmentSpec{
		Attacher: pv.Spec.CSI.Driver, NodeName: node, Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: ptr.To(pv.Name)}}}
	require.NoError(t, c.Client.Create(ctx, va))
	t.Cleanup(func() {
		require.NoError(t, client.IgnoreNotFound(c.Client.Delete(ctx, va)))
		testenv.Eventually(t, "VolumeAttachment gone", time.Minute, func() bool {
			return apierrors.IsNotFound(c.Client.Get(ctx, client.ObjectKeyFromObject(va), &storagev1.VolumeAttachment{}))
		})
	})
	testenv.Eventually(t, "VolumeAttachment attached", time.Minute, func() bool {
		return c.Client.Get(ctx, client.ObjectKeyFromObject(va), va) == nil && va.Status.Attached
	})
	return va.Status.AttachmentMetadata, string(va.UID)
}
