package cluster_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/test/cluster"
)

// TestRealNodes: a cluster whose nodes run the real kubelet and containerd
// with the images make images builds. A database pod writes rows with
// sqlite3 into a claim that kubelet mounts through the CSI node plugin
// (itself a DaemonSet pod registered with kubelet), on the node the
// scheduler picks for the volume; a second pod reads them back. Teardown leaves no cgroup, mount or loop
// device.
func TestRealNodes(t *testing.T) {
	testenv.NeedRoot(t)
	root, err := testenv.RepoRoot()
	require.NoError(t, err)
	ctx := context.Background()
	// Another test's volume, mounted while the nodes start.
	foreign := t.TempDir()
	img, mnt := filepath.Join(foreign, "img"), filepath.Join(foreign, "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o755))
	require.NoError(t, exec.Command("truncate", "-s", "16M", img).Run())
	require.NoError(t, exec.Command("mkfs.ext4", "-q", img).Run())
	require.NoError(t, exec.Command("mount", "-o", "loop", img, mnt).Run())
	network, err := cluster.NewNetwork("fr", "10.248.0")
	require.NoError(t, err)
	defer func() { assert.NoError(t, network.Close()) }()
	c, err := cluster.Start(ctx, cluster.Options{Network: network, ServiceCIDR: "10.95.0.0/24", Kubelet: true,
		Images: filepath.Join(root, "bin", "images"), Log: testr.New(t)})
	require.NoError(t, err)
	dir := c.Dir
	cgroups := func() []string {
		m, _ := filepath.Glob("/sys/fs/cgroup/pids/ferry-" + strings.TrimPrefix(filepath.Base(dir), "ferry-cluster-") + "-*")
		return m
	}
	stopped := false
	defer func() {
		if t.Failed() {
			t.Log(c.Logs(40))
		}
		if !stopped {
			assert.NoError(t, c.Stop())
		}
	}()
	require.Len(t, cgroups(), 2, "each node has its cgroup subtree")
	require.NoError(t, exec.Command("umount", mnt).Run())
	testenv.Eventually(t, "the other test's loop device to be released", 10*time.Second, func() bool {
		out, err := exec.Command("losetup", "-j", img).Output()
		return err == nil && len(strings.TrimSpace(string(out))) == 0
	})

	require.NoError(t, c.Client.Create(ctx, pvc("db", cluster.StorageClass, nil)))
	write := cluster.AppPod("default", "writer", "db",
		"sqlite3 /data/app.db 'create table t(k text, v int); insert into t values (\"answer\", 42), (\"node\", 1);'")
	require.NoError(t, c.Client.Create(ctx, write))
	require.NoError(t, c.WaitPodSucceeded(ctx, "default", "writer", 3*time.Minute))

	read := cluster.AppPod("default", "reader", "db",
		`test "$(sqlite3 /data/app.db 'select sum(v) from t')" = 43`)
	require.NoError(t, c.Client.Create(ctx, read))
	require.NoError(t, c.WaitPodSucceeded(ctx, "default", "reader", 3*time.Minute))

	got := &corev1.Pod{}
	require.NoError(t, c.Client.Get(ctx, client.ObjectKey{Namespace: "default", Name: "reader"}, got))
	assert.True(t, strings.HasPrefix(got.Status.PodIP, "10.244."), "pod address from the node's pod range, got %q", got.Status.PodIP)

	// A pod still using the volume when the cluster stops: its node is
	// killed, not drained, and the volume's loop device must go anyway.
	require.NoError(t, c.Client.Create(ctx, cluster.AppPod("default", "holder", "db", "sleep infinity")))
	testenv.Eventually(t, "the holder pod running", 2*time.Minute, func() bool {
		p := &corev1.Pod{}
		return c.Client.Get(ctx, client.ObjectKey{Namespace: "default", Name: "holder"}, p) == nil && p.Status.Phase == corev1.PodRunning
	})
	loops, err := c.LoopDevices()
	require.NoError(t, err)
	require.NotEmpty(t, loops, "the running pod's volume is on a loop device of this cluster")

	require.NoError(t, c.Stop())
	stopped = true
	assert.Empty(t, cgroups(), "node cgroups removed")
	_, err = os.Stat(dir)
	assert.True(t, os.IsNotExist(err), "cluster dir removed")
	testenv.Eventually(t, "the cluster's loop devices detached", 10*time.Second, func() bool {
		out, err := exec.Command("losetup", "--list", "--noheadings", "--output", "BACK-MAJ:MIN,BACK-INO").Output()
		require.NoError(t, err)
		attached := map[string]bool{}
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) == 2 {
				attached[f[0]+":"+f[1]] = true
			}
		}
		for _, id := range loops {
			if attached[id] {
				return false
			}
		}
		return true
	})
	mi, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	assert.NotContains(t, string(mi), dir, "mounts left behind")
}
