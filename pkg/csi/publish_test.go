package csi

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	csispec "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/go-logr/logr/funcr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/ferrysync/ferry/pkg/kubelet"
	"github.com/ferrysync/ferry/pkg/mount"
	"github.com/ferrysync/ferry/test/cluster"
)

// TestPublishLifecycle stages and publishes a provisioned PVC read-write
// and writes into it, then publishes a PVC restored from its snapshot and a
// clone of it read-only and reads the data back; read-only refuses writes.
// Secrets handed to the plugin never reach the log. Taking everything down
// leaves no mount, directory or loop device.
func TestPublishLifecycle(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	root := filepath.Join(kubelet.CSIPluginDir(c.Nodes[0].KubeletDir), "ferrysync.io~lifecycle")
	var logs bytes.Buffer
	log := funcr.New(func(prefix, args string) { logs.WriteString(prefix + args + "\n") }, funcr.Options{Verbosity: 4})
	p := NewPublisher(c.Nodes[0].KubeletDir, log, WithRoot(root))
	defer p.Close()

	kc, err := Dial(ctx, c.Nodes[0].PluginSocket(cluster.DriverName), DefaultCallTimeout, discard)
	require.NoError(t, err)
	info, err := kc.node.NodeGetInfo(ctx, &csispec.NodeGetInfoRequest{})
	require.NoError(t, err)
	assert.Equal(t, c.Nodes[0].Name, info.GetNodeId(), "NodeGetInfo names the node")
	assert.True(t, kc.Stages(), "the driver stages")
	require.NoError(t, kc.Close())

	pv := claim(t, c, "lifecycle", cluster.StorageClass, corev1.PersistentVolumeFilesystem, nil)
	v := FromPersistentVolume(pv)
	v.StageSecrets = map[string]string{"password": "stage-secret-value"}
	v.PublishSecrets = map[string]string{"token": "publish-secret-value"}
	dir, err := p.Publish(ctx, pv.Name, v)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "hello"), []byte("replicate me"), 0o640))
	// Publishing again is a no-op; the data stays.
	again, err := p.Publish(ctx, pv.Name, v)
	require.NoError(t, err)
	require.Equal(t, dir, again)
	require.FileExists(t, filepath.Join(dir, "hello"))
	require.NoError(t, p.Unpublish(ctx, pv.Name))
	require.NoError(t, p.Unpublish(ctx, pv.Name), "a second unpublish succeeds")

	assert.Contains(t, logs.String(), "NodeStageVolume")
	assert.Contains(t, logs.String(), "***stripped***")
	assert.NotContains(t, logs.String(), "stage-secret-value")
	assert.NotContains(t, logs.String(), "publish-secret-value")

	require.NoError(t, c.Snapshot(ctx, "default", "lifecycle-snap", "lifecycle"))
	restored := claim(t, c, "lifecycle-restored", cluster.StorageClass, corev1.PersistentVolumeFilesystem,
		&corev1.TypedLocalObjectReference{APIGroup: ptr.To("snapshot.storage.k8s.io"), Kind: "VolumeSnapshot", Name: "lifecycle-snap"})
	clone := claim(t, c, "lifecycle-clone", cluster.StorageClass, corev1.PersistentVolumeFilesystem,
		&corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: "lifecycle"})
	for _, pv := range []*corev1.PersistentVolume{restored, clone} {
		v := FromPersistentVolume(pv)
		v.ReadOnly = true
		dir, err := p.Publish(ctx, pv.Name, v)
		require.NoError(t, err)
		got, err := os.ReadFile(filepath.Join(dir, "hello"))
		require.NoError(t, err)
		assert.Equal(t, "replicate me", string(got))
		ro, err := mount.ReadOnly(dir)
		require.NoError(t, err)
		assert.True(t, ro)
		err = os.WriteFile(filepath.Join(dir, "new"), []byte("x"), 0o644)
		assert.True(t, errors.Is(err, syscall.EROFS), "write to a read-only volume: %v", err)
		err = os.Remove(filepath.Join(dir, "hello"))
		assert.True(t, errors.Is(err, syscall.EROFS), "remove from a read-only volume: %v", err)
		// Asked read-write now, the volume is published again that way.
		v.ReadOnly = false
		dir, err = p.Publish(ctx, pv.Name, v)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, "new"), []byte("x"), 0o644))
		require.NoError(t, p.Unpublish(ctx, pv.Name))
	}
	assertNothingLeft(t, c, c.Nodes[0].KubeletDir)
}

// TestPublishBlock publishes a Block volume: a device file, whose bytes
// written through one publish are read through the next.
func TestPublishBlock(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	root := filepath.Join(kubelet.CSIPluginDir(c.Nodes[0].KubeletDir), "ferrysync.io~block")
	p := NewPublisher(c.Nodes[0].KubeletDir, discard, WithRoot(root))
	defer p.Close()
	pv := claim(t, c, "block", cluster.StorageClass, corev1.PersistentVolumeBlock, nil)
	v := FromPersistentVolume(pv)
	dev, err := p.Publish(ctx, pv.Name, v)
	require.NoError(t, err)
	st, err := os.Stat(dev)
	require.NoError(t, err)
	require.Equal(t, os.ModeDevice, st.Mode()&(os.ModeDevice|os.ModeCharDevice), "a block device file")
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte("block payload"), 4096)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
	require.NoError(t, p.Unpublish(ctx, pv.Name))

	v.ReadOnly = true
	dev, err = p.Publish(ctx, pv.Name, v)
	require.NoError(t, err)
	f, err = os.Open(dev)
	require.NoError(t, err)
	got := make([]byte, len("block payload"))
	_, err = f.ReadAt(got, 4096)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	assert.Equal(t, "block payload", string(got))
	require.NoError(t, p.Unpublish(ctx, pv.Name))
	assertNothingLeft(t, c, c.Nodes[0].KubeletDir)
}
