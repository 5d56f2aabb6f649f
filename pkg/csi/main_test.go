package csi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/go-logr/logr"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/pkg/kubelet"
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
		shared, clusterErr = cluster.Start(context.Background(), cluster.Options{Nodes: []string{"node-a"}, Profiles: []string{"ceph", "longhorn", "lvm", "topolvm"}})
	})
	require.NoError(t, clusterErr)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(shared.Logs(40))
		}
	})
	return shared
}

var size32Mi = resource.MustParse("32Mi")

// claim creates a PVC and returns its PV once bound.
func claim(t *testing.T, c *cluster.Cluster, name, class string, mode corev1.PersistentVolumeMode, source *corev1.TypedLocalObjectReference) *corev1.PersistentVolume {
	t.Helper()
	pv, err := c.Bind(context.Background(), &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To(class),
			VolumeMode:       ptr.To(mode),
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size32Mi}},
			DataSource:       source,
		},
	})
	require.NoError(t, err)
	return pv
}

// assertNothingLeft checks that nothing is mounted under the node's
// kubelet CSI directory (where Ferry's roots and kubelet's staging paths
// are), that no directory is left there but empty driver directories and
// the test roots, and that no loop device backs one of the cluster's
// images.
func assertNothingLeft(t *testing.T, c *cluster.Cluster, kubeletDir string) {
	t.Helper()
	dir := kubelet.CSIPluginDir(kubeletDir)
	assertNoMounts(t, dir)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		require.NoError(t, err)
		if rel, _ := filepath.Rel(dir, path); strings.Contains(rel, "/") || !d.IsDir() {
			t.Errorf("left behind: %s", path)
		}
		return nil
	})
	if !errors.Is(err, fs.ErrNotExist) {
		require.NoError(t, err)
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
