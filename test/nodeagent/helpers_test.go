package nodeagent_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/test/cluster"
	"github.com/ferrysync/ferry/test/harness"
)

// bins are Ferry's programs, built once for the package.
var bins *harness.Binaries

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse()
	if testing.Short() {
		return m.Run() // the test skips; nothing to build
	}
	var err error
	if bins, err = harness.Build(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer bins.Remove()
	return m.Run()
}

const ferryNamespace = harness.Namespace

func pvc(ns, name string, source *corev1.TypedLocalObjectReference, owner client.Object) *corev1.PersistentVolumeClaim {
	p := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To(cluster.StorageClass),
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
			DataSource:       source,
		},
	}
	if owner != nil {
		kind := "ReplicationDestination"
		if _, ok := owner.(*volsyncv1alpha1.ReplicationSource); ok {
			kind = "ReplicationSource"
		}
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: volsyncv1alpha1.GroupVersion.String(), Kind: kind,
			Name: owner.GetName(), UID: owner.GetUID(), Controller: ptr.To(true)}}
	}
	return p
}

// bound creates a PVC and returns its PV once bound.
func bound(t *testing.T, c *cluster.Cluster, claim *corev1.PersistentVolumeClaim) *corev1.PersistentVolume {
	t.Helper()
	pv, err := c.Bind(context.Background(), claim)
	require.NoError(t, err)
	return pv
}

// snapshotClaim cuts a VolumeSnapshot of a PVC, waits until it is ready and
// restores it into a new PVC owned by owner: the point-in-time copy a
// ReplicationSource with copyMethod Snapshot makes.
func snapshotClaim(t *testing.T, c *cluster.Cluster, ns, from, name string, owner client.Object) *corev1.PersistentVolume {
	t.Helper()
	require.NoError(t, c.Snapshot(context.Background(), ns, name, from))
	return bound(t, c, pvc(ns, name, &corev1.TypedLocalObjectReference{
		APIGroup: ptr.To("snapshot.storage.k8s.io"), Kind: "VolumeSnapshot", Name: name}, owner))
}

// volumeOf is the assignment's copy of a PV.
func volumeOf(pv *corev1.PersistentVolume) agentv1alpha1.Volume {
	return agentv1alpha1.Volume{PersistentVolumeName: pv.Name, Claim: pv.Spec.ClaimRef.Name, Driver: pv.Spec.CSI.Driver,
		VolumeHandle: pv.Spec.CSI.VolumeHandle}
}

// syncFS flushes the filesystem mounted at dir to its device.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}
