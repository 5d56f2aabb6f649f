package cluster

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	mountutils "k8s.io/mount-utils"

	"github.com/ferrysync/ferry/pkg/kubelet"
)

// VolumeMount says what a test mounts through a node plugin, the way
// kubelet mounts it: staged (when the plugin stages) at kubelet's staging
// path for the volume, which it shares with whoever else has the volume
// staged on the node (Ferry's agent among them), then published at the
// test's target.
type VolumeMount struct {
	// Socket is the node plugin's; KubeletDir the node's kubelet root.
	Socket, KubeletDir string
	// Driver and VolumeID name the volume.
	Driver, VolumeID string
	// ReadOnly publishes it read-only.
	ReadOnly bool
	// PublishContext is the VolumeAttachment's attachment metadata, for
	// attach-required drivers.
	PublishContext map[string]string
	// StageSecrets are the PV's node-stage secrets, for drivers that
	// require them.
	StageSecrets map[string]string
	// AsPod mounts as kubelet does for a pod, its vol_data.json beside the
	// staging path included: kubelet then owns the staging, and Ferry
	// leaves it staged.
	AsPod bool
}

// Volume is a VolumeMount of a volume of driver through this node's plugin.
func (n Node) Volume(driver, volumeID string) VolumeMount {
	return VolumeMount{Socket: n.PluginSocket(driver), KubeletDir: n.KubeletDir, Driver: driver, VolumeID: volumeID}
}

// MountVolume mounts m so a test can look at its data, and returns the
// mount path and the function that takes it down. The path is where kubelet
// would publish it for a pod (below the node's pods/ directory, which every
// node plugin sees; Longhorn's sees nothing else there), for a pod named by
// workDir, and goes when unmounted.
func MountVolume(ctx context.Context, m VolumeMount, workDir string) (string, func() error, error) {
	pod := filepath.Join(m.KubeletDir, "pods", fmt.Sprintf("test-%x", sha256.Sum256([]byte(workDir)))[:21])
	target := filepath.Join(pod, "volumes", "kubernetes.io~csi", m.VolumeID, "mount")
	unmount, err := m.At(ctx, target)
	if err != nil {
		return "", nil, err
	}
	return target, func() error {
		if err := unmount(); err != nil {
			return err
		}
		// The pod's directories, as kubelet removes them once its volumes
		// are gone; each only if empty.
		for dir := filepath.Dir(target); dir != filepath.Dir(pod); dir = filepath.Dir(dir) {
			if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
				break
			}
		}
		return nil
	}, nil
}

// At mounts m at target (its parent is made) and returns the function that
// unpublishes it and, as kubelet does, unstages the volume unless another
// mount of the staging path remains (kubelet's GetDeviceMountRefs check):
// then whoever mounts it last unstages it.
func (m VolumeMount) At(ctx context.Context, target string) (func() error, error) {
	conn, err := grpc.NewClient("unix://"+m.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", m.Socket, err)
	}
	node := csi.NewNodeClient(conn)
	stages, multiWriter, err := nodeCaps(ctx, node)
	if err != nil {
		conn.Close()
		return nil, err
	}
	mode := csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	if multiWriter {
		mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER // kubelet's RWO for such a plugin
	}
	capability := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
	staging := ""
	if stages {
		staging = kubelet.StagingPath(m.KubeletDir, m.Driver, m.VolumeID)
		if err := m.stage(ctx, node, staging, capability); err != nil {
			conn.Close()
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		conn.Close()
		return nil, fmt.Errorf("create parent of %s: %w", target, err)
	}
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: m.VolumeID, StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: capability, Readonly: m.ReadOnly, PublishContext: m.PublishContext}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("publish %s: %w", m.VolumeID, err)
	}
	once := func() error {
		if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: m.VolumeID, TargetPath: target}); err != nil {
			return fmt.Errorf("unpublish %s: %w", m.VolumeID, err)
		}
		if staging == "" {
			return nil
		}
		if refs, err := mountutils.New("").GetMountRefs(staging); err != nil || len(refs) > 0 {
			if m.AsPod && err == nil {
				return fmt.Errorf("unstage %s: the staging path is still mounted by other references %v", m.VolumeID, refs)
			}
			return err // someone else's mount: they unstage
		}
		if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: m.VolumeID, StagingTargetPath: staging}); err != nil {
			return fmt.Errorf("unstage %s: %w", m.VolumeID, err)
		}
		return m.removeStaging(staging)
	}
	unmount := func() error {
		defer conn.Close()
		// As kubelet does, try again for a while: the kernel can report a
		// mount busy for a moment (seen once in CI, with many processes
		// entering new mount namespaces that copy it), and kubelet waits
		// for other mounts of a staged volume to go before it unstages.
		deadline := time.Now().Add(30 * time.Second)
		for {
			err := once()
			if err == nil || time.Now().After(deadline) {
				return err
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return unmount, nil
}

// stage stages the volume at staging, writing kubelet's vol_data.json
// first when it mounts as a pod (kubelet writes it before NodeStageVolume).
func (m VolumeMount) stage(ctx context.Context, node csi.NodeClient, staging string, capability *csi.VolumeCapability) error {
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return fmt.Errorf("create staging path: %w", err)
	}
	if m.AsPod {
		data := fmt.Sprintf(`{"driverName":%q,"volumeHandle":%q}`, m.Driver, m.VolumeID)
		if err := os.WriteFile(filepath.Join(filepath.Dir(staging), "vol_data.json"), []byte(data), 0o644); err != nil {
			return fmt.Errorf("write vol_data.json: %w", err)
		}
	}
	if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: m.VolumeID, StagingTargetPath: staging,
		VolumeCapability: capability, PublishContext: m.PublishContext, Secrets: m.StageSecrets}); err != nil {
		if m.AsPod {
			_ = m.removeStaging(staging) // as kubelet does after a failed stage
		}
		return fmt.Errorf("stage %s: %w", m.VolumeID, err)
	}
	return nil
}

// removeStaging removes what kubelet removes after unstaging (removeMountDir
// in its csi_mounter.go): the staging directory, vol_data.json and their
// directory, each only if it is there and empty.
func (m VolumeMount) removeStaging(staging string) error {
	var errs []error
	for _, p := range []string{staging, filepath.Join(filepath.Dir(staging), "vol_data.json"), filepath.Dir(staging)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) && (m.AsPod || p == staging) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// nodeCaps says whether the plugin stages and has SINGLE_NODE_MULTI_WRITER.
func nodeCaps(ctx context.Context, node csi.NodeClient) (stages, multiWriter bool, err error) {
	resp, err := node.NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{})
	if err != nil {
		return false, false, fmt.Errorf("node capabilities: %w", err)
	}
	for _, c := range resp.GetCapabilities() {
		switch c.GetRpc().GetType() {
		case csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME:
			stages = true
		case csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER:
			multiWriter = true
		}
	}
	return stages, multiWriter, nil
}
