package csi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"

	"github.com/ferrysync/ferry/pkg/kubelet"
	"github.com/ferrysync/ferry/pkg/mount"
	"github.com/ferrysync/ferry/test/cluster"
)

// TestCrashRecovery crashes the agent between every two steps of publishing
// and of taking down (the steps run up to a point, then the Publisher is
// dropped without a word), starts a new one, and recovers with nothing
// wanted: no mount, directory or loop device may be left. Recovering with
// the volume still wanted and publishing it again completes it instead, with
// its data.
func TestCrashRecovery(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	kubeletDir := c.Nodes[0].KubeletDir
	root := WithRoot(filepath.Join(kubelet.CSIPluginDir(kubeletDir), "ferrysync.io~crash"))
	pv := claim(t, c, "crash", cluster.StorageClass, corev1.PersistentVolumeFilesystem, nil)
	v := FromPersistentVolume(pv)
	nothing := func(string) bool { return false }
	everything := func(string) bool { return true }

	{
		p := NewPublisher(kubeletDir, discard, root)
		dir, err := p.Publish(ctx, pv.Name, v)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, "kept"), []byte("still here"), 0o644))
		require.NoError(t, p.Unpublish(ctx, pv.Name))
		require.NoError(t, p.Close())
	}

	publishing := len(NewPublisher(kubeletDir, discard, root).publishSteps(pv.Name, v))
	for done := 0; done <= publishing; done++ {
		t.Run(fmt.Sprintf("publish-crash-after-%d-steps", done), func(t *testing.T) {
			crashed := NewPublisher(kubeletDir, discard, root)
			require.NoError(t, crashed.run(ctx, pv.Name, crashed.publishSteps(pv.Name, v)[:done]))
			_ = crashed.Close()

			p := NewPublisher(kubeletDir, discard, root)
			defer p.Close()
			require.NoError(t, p.Recover(ctx, nothing))
			assertNothingLeft(t, c, kubeletDir)

			// The same crash, with the volume still wanted.
			crashed = NewPublisher(kubeletDir, discard, root)
			require.NoError(t, crashed.run(ctx, pv.Name, crashed.publishSteps(pv.Name, v)[:done]))
			_ = crashed.Close()
			require.NoError(t, p.Recover(ctx, everything))
			dir, err := p.Publish(ctx, pv.Name, v)
			require.NoError(t, err)
			got, err := os.ReadFile(filepath.Join(dir, "kept"))
			require.NoError(t, err)
			assert.Equal(t, "still here", string(got))
			require.NoError(t, p.Unpublish(ctx, pv.Name))
			assertNothingLeft(t, c, kubeletDir)
		})
	}

	rec := record{Driver: v.Driver, Handle: v.Handle, Staged: true, StagingPath: kubelet.StagingPath(kubeletDir, v.Driver, v.Handle)}
	tree := NewPublisher(kubeletDir, discard, root).root
	tearing := len(NewPublisher(kubeletDir, discard, root).teardownSteps(tree, pv.Name, rec))
	for done := 0; done < tearing; done++ {
		t.Run(fmt.Sprintf("teardown-crash-after-%d-steps", done), func(t *testing.T) {
			crashed := NewPublisher(kubeletDir, discard, root)
			_, err := crashed.Publish(ctx, pv.Name, v)
			require.NoError(t, err)
			require.NoError(t, crashed.run(ctx, pv.Name, crashed.teardownSteps(tree, pv.Name, rec)[:done]))
			_ = crashed.Close()

			p := NewPublisher(kubeletDir, discard, root)
			defer p.Close()
			require.NoError(t, p.Recover(ctx, nothing))
			assertNothingLeft(t, c, kubeletDir)
		})
	}
}

// TestDirectReusesKubeletMount mounts a volume the way kubelet does for a
// pod (staged under plugins/kubernetes.io/csi, published under
// pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount), finds that mount, and
// binds it read-only for the agent instead of staging the volume again:
// the pod's writes show through, the agent cannot write, and taking the
// agent's bind down leaves the pod's mount alone.
func TestDirectReusesKubeletMount(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	kubeletDir := c.Nodes[0].KubeletDir
	root := filepath.Join(kubelet.CSIPluginDir(kubeletDir), "ferrysync.io~direct")
	pv := claim(t, c, "direct", cluster.StorageClass, corev1.PersistentVolumeFilesystem, nil)
	v := FromPersistentVolume(pv)

	// Kubelet's side, through the same node plugin and at kubelet's paths.
	podMount := filepath.Join(kubeletDir, "pods", "0f1e2d3c-pod-uid", "volumes", "kubernetes.io~csi", pv.Name, "mount")
	pod := c.Nodes[0].Volume(v.Driver, v.Handle)
	pod.AsPod = true
	unmountPod, err := pod.At(ctx, podMount)
	require.NoError(t, err)
	defer func() {
		assert.NoError(t, unmountPod())
		assertNoMounts(t, kubeletDir)
		assertNoLoopDevices(t, c)
	}()
	require.NoError(t, os.WriteFile(filepath.Join(podMount, "app.db"), []byte("v1"), 0o600))
	// A pod being torn down leaves an empty, unmounted directory: not a
	// candidate.
	require.NoError(t, os.MkdirAll(filepath.Join(kubeletDir, "pods", "0a-old-pod", "volumes", "kubernetes.io~csi", pv.Name, "mount"), 0o750))

	found, err := mount.KubeletMount(kubeletDir, pv.Name, false)
	require.NoError(t, err)
	require.Equal(t, podMount, found)
	_, err = mount.KubeletMount(kubeletDir, "../../etc", false)
	require.Error(t, err, "a PV name that walks out of the kubeletDir root")
	_, err = mount.KubeletMount(kubeletDir, "no-such-pv", false)
	require.ErrorIs(t, err, mount.ErrNoKubeletMount)

	p := NewPublisher(kubeletDir, discard, WithRoot(root))
	defer p.Close()
	v.ReadOnly, v.Reuse = true, found
	dir, err := p.Publish(ctx, pv.Name, v)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(podMount, "app.db"), []byte("v2"), 0o600))
	got, err := os.ReadFile(filepath.Join(dir, "app.db"))
	require.NoError(t, err)
	assert.Equal(t, "v2", string(got), "the pod's writes show through")
	err = os.WriteFile(filepath.Join(dir, "app.db"), []byte("agent"), 0o600)
	assert.True(t, errors.Is(err, syscall.EROFS), "the agent's bind is read-only: %v", err)

	v.ReadOnly = false
	_, err = p.Publish(ctx, pv.Name, v)
	require.Error(t, err, "reuse is for reading only")

	require.NoError(t, p.Unpublish(ctx, pv.Name))
	assertNoMounts(t, root)
	still, err := mount.IsMountPoint(podMount)
	require.NoError(t, err)
	assert.True(t, still, "the pod's mount stays")
	got, err = os.ReadFile(filepath.Join(podMount, "app.db"))
	require.NoError(t, err)
	assert.Equal(t, "v2", string(got))
}
