package driver_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/go-logr/logr/testr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/test/cluster"
	"github.com/ferrysync/ferry/test/csidriver/driver"
)

// start runs a driver instance of profile p, on a socket in a short
// temporary path, for a node whose kubelet root is kubeletDir.
func start(t *testing.T, dataDir, node string, p driver.Profile, kubeletDir string) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "csi")
	require.NoError(t, err)
	sock := filepath.Join(dir, "csi.sock")
	d, err := driver.New(driver.Config{Endpoint: sock, NodeID: node, DataDir: dataDir, Profile: p, KubeletDir: kubeletDir, Log: testr.New(t)})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
		_ = os.RemoveAll(dir)
	})
	testenv.Eventually(t, "the driver's socket", 10*time.Second, func() bool { _, err := os.Stat(sock); return err == nil })
	return sock
}

// requireNoLeaks fails when a loop device or mount of dataDir or under
// paths remains.
func requireNoLeaks(t *testing.T, dataDir string, paths ...string) {
	t.Helper()
	out, err := exec.Command("losetup", "-a").CombinedOutput()
	require.NoError(t, err)
	assert.NotContains(t, string(out), dataDir, "loop devices left behind")
	mi, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	for _, p := range append(paths, dataDir) {
		assert.NotContains(t, string(mi), p, "mounts left behind")
	}
}

// TestSanity runs the CSI conformance suite, csi-sanity, against the driver
// in each strict profile: each is a valid CSI driver, strict only where
// the real one is. The mount and staging directories are where kubelet
// would put them (pods/, plugins/kubernetes.io/csi/), which every profile's
// plugin sees.
func TestSanity(t *testing.T) {
	testenv.NeedRoot(t)
	sanity := os.Getenv("CSI_SANITY")
	if sanity == "" {
		t.Fatal("CSI_SANITY not set: run the tests with make test, which builds csi-sanity")
	}
	for _, name := range driver.ProfileNames() {
		p := driver.Profiles[name]
		t.Run(name, func(t *testing.T) {
			data, kubeletDir := t.TempDir(), t.TempDir()
			sock := start(t, data, "node-a", p, kubeletDir)
			for _, dir := range []string{"pods", "plugins/kubernetes.io/csi"} {
				require.NoError(t, os.MkdirAll(filepath.Join(kubeletDir, dir), 0o750))
			}
			args := []string{"--csi.endpoint", sock,
				"--csi.mountdir", filepath.Join(kubeletDir, "pods", "sanity"), "--csi.stagingdir", filepath.Join(kubeletDir, "plugins", "kubernetes.io", "csi", "sanity"),
				"--csi.testvolumesize", "67108864", "--ginkgo.no-color"}
			if len(p.StageSecrets) > 0 {
				secrets := filepath.Join(t.TempDir(), "secrets.yaml")
				yaml := "NodeStageVolumeSecret:\n"
				for _, k := range p.StageSecrets {
					yaml += "  " + k + ": sanity\n"
				}
				require.NoError(t, os.WriteFile(secrets, []byte(yaml), 0o600))
				args = append(args, "--csi.secrets", secrets)
			}
			out, err := exec.Command(sanity, args...).CombinedOutput()
			t.Log(lastLines(string(out), 15))
			require.NoError(t, err)
			assert.Contains(t, string(out), "0 Failed")
			requireNoLeaks(t, data, kubeletDir)
		})
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func connect(t *testing.T, sock string) csi.ControllerClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return csi.NewControllerClient(conn)
}

// createVolume makes a 32 MiB filesystem volume (from src, if any) and
// returns its ID.
func createVolume(t *testing.T, c csi.ControllerClient, name string, src *csi.VolumeContentSource) string {
	t.Helper()
	resp, err := c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{mountRW},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 32 << 20}, VolumeContentSource: src})
	require.NoError(t, err)
	return resp.GetVolume().GetVolumeId()
}

var mountRW = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

// TestSnapshotsAndClonesCarryData writes into a volume, snapshots and
// clones it, and reads the data back from the restored and cloned volumes;
// a read-only publish refuses writes.
func TestSnapshotsAndClonesCarryData(t *testing.T) {
	testenv.NeedRoot(t)
	ctx := context.Background()
	data, work := t.TempDir(), t.TempDir()
	sock := start(t, data, "node-a", driver.Profiles["hostpath"], work)
	c := connect(t, sock)
	vm := func(id string, ro bool) cluster.VolumeMount {
		return cluster.VolumeMount{Socket: sock, KubeletDir: work, Driver: "d", VolumeID: id, ReadOnly: ro}
	}
	orig := createVolume(t, c, "orig", nil)
	target, unmount, err := cluster.MountVolume(ctx, vm(orig, false), work)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(target, "hello"), []byte("from orig"), 0o644))
	require.NoError(t, unmount())

	snap, err := c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: orig})
	require.NoError(t, err)
	assert.True(t, snap.GetSnapshot().GetReadyToUse())
	restored := createVolume(t, c, "restored", &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}})
	clone := createVolume(t, c, "clone", &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: orig}}})
	for _, id := range []string{restored, clone} {
		target, unmount, err := cluster.MountVolume(ctx, vm(id, true), work)
		require.NoError(t, err)
		got, err := os.ReadFile(filepath.Join(target, "hello"))
		require.NoError(t, err)
		assert.Equal(t, "from orig", string(got))
		err = os.WriteFile(filepath.Join(target, "nope"), []byte("x"), 0o644)
		assert.ErrorContains(t, err, "read-only file system")
		require.NoError(t, unmount())
	}
	requireNoLeaks(t, data, work)
}

// TestDetachRevokesTheDevice: the ebs profile's ControllerUnpublishVolume
// takes the disk off the node, as EC2 does: a filesystem still mounted
// from it fails every write from then on; what was written before is in
// the volume when it is attached again.
func TestDetachRevokesTheDevice(t *testing.T) {
	testenv.NeedRoot(t)
	ctx := context.Background()
	data, work := t.TempDir(), t.TempDir()
	sock := start(t, data, "node-a", driver.Profiles["ebs"], work)
	c := connect(t, sock)
	id := createVolume(t, c, "disk", nil)
	attachTo := func() map[string]string {
		resp, err := c.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "node-a", VolumeCapability: mountRW})
		require.NoError(t, err)
		require.NotEmpty(t, resp.GetPublishContext()["devicePath"])
		return resp.GetPublishContext()
	}
	m := cluster.VolumeMount{Socket: sock, KubeletDir: work, Driver: "ebs", VolumeID: id, PublishContext: attachTo()}
	target, unmount, err := cluster.MountVolume(ctx, m, work)
	require.NoError(t, err)
	write := func(name string) error {
		f, err := os.Create(filepath.Join(target, name))
		if err != nil {
			return err
		}
		_, err = f.Write([]byte(strings.Repeat("x", 8192)))
		if err == nil {
			err = f.Sync()
		}
		return errors.Join(err, f.Close())
	}
	require.NoError(t, write("before"))
	_, err = c.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "node-a"})
	require.NoError(t, err)
	require.Error(t, write("after"), "the disk is gone from the node")
	require.NoError(t, unmount())

	m.PublishContext = attachTo()
	target, unmount, err = cluster.MountVolume(ctx, m, work)
	require.NoError(t, err)
	_, err = os.Stat(filepath.Join(target, "before"))
	require.NoError(t, err, "attached again: the data written before the detach")
	require.NoError(t, unmount())
	_, err = c.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "node-a"})
	require.NoError(t, err)
	requireNoLeaks(t, data, work)
}
