package csi

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/go-logr/logr"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/pkg/mount"
	"github.com/ferrysync/ferry/test/cluster"
)

// One cluster serves the package's tests; it starts with the first test
// that needs it.
var (
	clusterOnce sync.Once
	shared      *cluster.Cluster
	clusterErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		if err := shared.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop cluster:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// needCluster returns the package's cluster, starting it on first use.
func needCluster(t *testing.T) *cluster.Cluster {
	t.Helper()
	testenv.NeedRoot(t)
	if testing.Short() {
		t.Skip("needs a cluster; not in -short mode")
	}
	clusterOnce.Do(func() {
		shared, clusterErr = cluster.Start(context.Background(), cluster.Options{Nodes: []string{"node-a"}})
	})
	require.NoError(t, clusterErr)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(shared.Logs(40))
		}
	})
	return shared
}

// claim creates a PVC and returns its PV once bound.
func claim(t *testing.T, c *cluster.Cluster, name, class string, mode corev1.PersistentVolumeMode, source *corev1.TypedLocalObjectReference) *corev1.PersistentVolume {
	t.Helper()
	pv, err := c.Bind(context.Background(), &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To(class),
			VolumeMode:       ptr.To(mode),
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("32Mi")}},
			DataSource:       source,
		},
	})
	require.NoError(t, err)
	return pv
}

// assertNothingLeft checks that nothing is mounted under root, root holds no
// volume directory, and no loop device backs one of the cluster's images.
func assertNothingLeft(t *testing.T, c *cluster.Cluster, root string) {
	t.Helper()
	assertNoMounts(t, root)
	entries, err := os.ReadDir(root)
	if err == nil {
		require.Empty(t, entries, "volume directories left under %s", root)
	}
	assertNoLoopDevices(t, c)
}

// assertNoMounts checks that nothing is mounted under root.
func assertNoMounts(t *testing.T, root string) {
	t.Helper()
	mounts, err := mount.Under(root)
	require.NoError(t, err)
	require.Empty(t, mounts, "mounts left under %s", root)
}

// assertNoLoopDevices checks that no loop device backs one of the
// cluster's volume images: nothing is staged any more.
func assertNoLoopDevices(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	testenv.NoLoopDevices(t, c.Dir)
}

// discard is a logger for Publishers whose logs no test reads.
var discard = logr.Discard()
