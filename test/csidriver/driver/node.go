package driver

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// NodeGetInfo names this node, its topology and the profile's attach
// limit.
func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	if d.cfg.NodeID == "" {
		return nil, status.Error(codes.FailedPrecondition, "this instance serves no node")
	}
	return &csi.NodeGetInfoResponse{
		NodeId:             d.cfg.NodeID,
		MaxVolumesPerNode:  d.cfg.Profile.MaxVolumesPerNode,
		AccessibleTopology: &csi.Topology{Segments: map[string]string{TopologyKey: d.cfg.NodeID}},
	}, nil
}

// NodeGetCapabilities: the node stages (loop device, filesystem mount) and
// publishes (bind mounts), unless the profile mounts at publish.
func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []csi.NodeServiceCapability_RPC_Type
	if !d.cfg.Profile.NoStage {
		caps = append(caps, csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME)
	}
	if d.cfg.Profile.SingleNodeMultiWriter {
		caps = append(caps, csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER)
	}
	resp := &csi.NodeGetCapabilitiesResponse{}
	for _, c := range caps {
		resp.Capabilities = append(resp.Capabilities, &csi.NodeServiceCapability{
			Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: c}}})
	}
	return resp, nil
}

// NodeStageVolume attaches the image to a loop device and, for a mount
// volume, mounts its ext4 at the staging path (or, with StageInSubdir, in
// a directory below it named by the volume). A block volume records its
// device in the staging directory. Repeating it is a no-op.
func (d *Driver) NodeStageVolume(_ context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	p := d.cfg.Profile
	if p.NoStage {
		return nil, status.Error(codes.Unimplemented, "this driver does not stage volumes")
	}
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if id == "" || staging == "" || req.GetVolumeCapability() == nil {
		return nil, status.Error(codes.InvalidArgument, "volume ID, staging path and capability are required")
	}
	for _, k := range p.StageSecrets {
		if req.GetSecrets()[k] == "" {
			return nil, status.Errorf(codes.InvalidArgument, "stage secrets cannot be nil or empty (missing %q)", k)
		}
	}
	vol, err := d.nodeVolume(id, req.GetVolumeCapability())
	if err != nil {
		return nil, err
	}
	if p.AttachRequired {
		if err := d.requireAttached(id, req.GetPublishContext()); err != nil {
			return nil, err
		}
	}
	if p.DevicePath && req.GetPublishContext()["devicePath"] == "" {
		return nil, status.Error(codes.InvalidArgument, "Device path not provided")
	}
	if !p.visible(d.cfg.KubeletDir, staging) {
		return &csi.NodeStageVolumeResponse{}, nil // staged inside the plugin's container only
	}
	if old := vol.Staged[d.cfg.NodeID]; p.OneStagingPath && old != "" && old != staging {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %q is already staged at %v", id, []string{old})
	}
	if p.StageInSubdir {
		if _, err := os.Stat(staging); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "staging path %s does not exist on node", staging)
		}
	} else if err := os.MkdirAll(staging, 0o750); err != nil {
		return nil, status.Errorf(codes.Internal, "create staging path: %v", err)
	}
	mountPoint := d.stagedAt(id, staging)
	if err := os.MkdirAll(mountPoint, 0o750); err != nil {
		return nil, status.Errorf(codes.Internal, "create staging mount point: %v", err)
	}
	if req.GetVolumeCapability().GetBlock() == nil {
		if mounted, err := mountinfo.Mounted(mountPoint); err != nil {
			return nil, status.Errorf(codes.Internal, "inspect staging path: %v", err)
		} else if mounted {
			return &csi.NodeStageVolumeResponse{}, d.recordStaged(id, staging)
		}
	}
	loops.Lock()
	defer loops.Unlock()
	dev, err := attach(d.imagePath(id))
	if err != nil {
		return nil, err
	}
	if req.GetVolumeCapability().GetBlock() != nil {
		if err := os.WriteFile(filepath.Join(mountPoint, "device"), []byte(dev), 0o600); err != nil {
			return nil, status.Errorf(codes.Internal, "record device: %v", err)
		}
		return &csi.NodeStageVolumeResponse{}, d.recordStaged(id, staging)
	}
	opts := strings.Join(req.GetVolumeCapability().GetMount().GetMountFlags(), ",")
	if err := unix.Mount(dev, mountPoint, "ext4", 0, opts); err != nil {
		return nil, status.Errorf(codes.Internal, "mount %s at %s: %v", dev, mountPoint, err)
	}
	return &csi.NodeStageVolumeResponse{}, d.recordStaged(id, staging)
}

// stagedAt is where a volume staged at staging is mounted.
func (d *Driver) stagedAt(id, staging string) string {
	if d.cfg.Profile.StageInSubdir {
		return filepath.Join(staging, id)
	}
	return staging
}

// NodeUnstageVolume unmounts the staging path and frees the loop device
// unless another node's staging still mounts it.
// Unstaging what is not staged succeeds.
func (d *Driver) NodeUnstageVolume(_ context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	p := d.cfg.Profile
	if p.NoStage {
		return nil, status.Error(codes.Unimplemented, "this driver does not stage volumes")
	}
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if id == "" || staging == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID and staging path are required")
	}
	vol, err := d.known(id)
	if err != nil {
		return nil, err
	}
	if !p.visible(d.cfg.KubeletDir, staging) {
		return &csi.NodeUnstageVolumeResponse{}, nil
	}
	if pub := vol.published(d.cfg.NodeID); p.OneStagingPath && len(pub) > 0 {
		return nil, status.Errorf(codes.Internal, "volume %q is still published at %q on node %q", id, pub, d.cfg.NodeID)
	}
	mountPoint := d.stagedAt(id, staging)
	if err := unmountIfMounted(mountPoint); err != nil {
		return nil, err
	}
	_ = os.Remove(filepath.Join(mountPoint, "device"))
	if p.StageInSubdir {
		_ = os.Remove(mountPoint)
	}
	loops.Lock()
	defer loops.Unlock()
	if err := detachUnused(d.imagePath(id)); err != nil {
		return nil, err
	}
	return &csi.NodeUnstageVolumeResponse{}, d.recordUnstaged(id)
}

// NodePublishVolume bind-mounts the staged volume (or its device, for a
// block volume) at the target path, read-only when asked; a profile
// without staging attaches and mounts the volume here.
func (d *Driver) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	p := d.cfg.Profile
	id, staging, target := req.GetVolumeId(), req.GetStagingTargetPath(), req.GetTargetPath()
	if id == "" || target == "" || req.GetVolumeCapability() == nil || (staging == "" && !p.NoStage) {
		return nil, status.Error(codes.InvalidArgument, "volume ID, staging path, target path and capability are required")
	}
	vol, err := d.nodeVolume(id, req.GetVolumeCapability())
	if err != nil {
		return nil, err
	}
	if !p.visible(d.cfg.KubeletDir, target) {
		return &csi.NodePublishVolumeResponse{}, nil // mounted inside the plugin's container only
	}
	if !p.NoStage && p.OneStagingPath {
		switch old := vol.Staged[d.cfg.NodeID]; {
		case old == "":
			return nil, status.Errorf(codes.FailedPrecondition, "volume %q must be staged before publishing", id)
		case old != staging:
			return nil, status.Errorf(codes.InvalidArgument, "volume %q was staged at %v, not %q", id, []string{old}, staging)
		}
	}
	if req.GetVolumeCapability().GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER {
		// The CSI spec's single writer, as csi-driver-host-path keeps it
		// (pkg/hostpath/nodeserver.go:541-557).
		if pub := vol.published(d.cfg.NodeID); len(pub) > 0 && !slices.Contains(pub, target) {
			return nil, status.Errorf(codes.FailedPrecondition, "volume uses SINGLE_NODE_SINGLE_WRITER access mode and is already mounted at a different target path %v", pub)
		}
	}
	block := req.GetVolumeCapability().GetBlock() != nil
	if err := makeTarget(target, block); err != nil {
		return nil, err
	}
	if mounted, err := mountinfo.Mounted(target); err != nil {
		return nil, status.Errorf(codes.Internal, "inspect target: %v", err)
	} else if mounted {
		return &csi.NodePublishVolumeResponse{}, nil
	}
	if p.NoStage {
		err = d.mountDirect(id, target, block, req.GetVolumeCapability().GetMount().GetMountFlags())
	} else {
		err = d.bindStaged(id, d.stagedAt(id, staging), target, block)
	}
	if err != nil {
		return nil, err
	}
	if req.GetReadonly() {
		if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			_ = unix.Unmount(target, 0)
			return nil, status.Errorf(codes.Internal, "make %s read-only: %v", target, err)
		}
	}
	return &csi.NodePublishVolumeResponse{}, d.recordPublished(id, target, true)
}

// makeTarget makes the target (the caller makes its parent, as kubelet
// does: csi-driver-host-path's os.Mkdir refuses a missing parent).
func makeTarget(target string, block bool) error {
	if _, err := os.Stat(filepath.Dir(target)); err != nil {
		return status.Errorf(codes.Internal, "target's parent: %v", err)
	}
	if !block {
		if err := os.Mkdir(target, 0o750); err != nil && !os.IsExist(err) {
			return status.Errorf(codes.Internal, "create target: %v", err)
		}
		return nil
	}
	f, err := os.OpenFile(target, os.O_CREATE, 0o600)
	if err != nil {
		return status.Errorf(codes.Internal, "create target file: %v", err)
	}
	return f.Close()
}

// bindStaged binds what staging holds at target.
func (d *Driver) bindStaged(id, mountPoint, target string, block bool) error {
	src := mountPoint
	if block {
		dev, err := os.ReadFile(filepath.Join(mountPoint, "device"))
		if err != nil {
			return status.Errorf(codes.FailedPrecondition, "volume is not staged: %v", err)
		}
		src = string(dev)
	} else if mounted, _ := mountinfo.Mounted(mountPoint); !mounted {
		return status.Errorf(codes.FailedPrecondition, "volume %q is not staged at %s", id, mountPoint)
	}
	if err := unix.Mount(src, target, "", unix.MS_BIND, ""); err != nil {
		return status.Errorf(codes.Internal, "bind %s at %s: %v", src, target, err)
	}
	return nil
}

// mountDirect attaches the volume and mounts it (or binds its device) at
// target, for a profile without staging. OneMount refuses a device that is
// mounted already, as lvm-localpv does.
func (d *Driver) mountDirect(id, target string, block bool, flags []string) error {
	loops.Lock()
	defer loops.Unlock()
	dev, err := attach(d.imagePath(id))
	if err != nil {
		return err
	}
	if d.cfg.Profile.OneMount && !block {
		mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (bool, bool) { return m.Source != dev, false })
		if err != nil {
			return status.Errorf(codes.Internal, "read mounts: %v", err)
		}
		if len(mounts) > 0 {
			return status.Errorf(codes.Internal, "verifyMount: device already mounted at %s", mounts[0].Mountpoint)
		}
	}
	if block {
		err = unix.Mount(dev, target, "", unix.MS_BIND, "")
	} else {
		err = unix.Mount(dev, target, "ext4", 0, strings.Join(flags, ","))
	}
	if err != nil {
		_ = detachUnused(d.imagePath(id))
		return status.Errorf(codes.Internal, "mount %s at %s: %v", dev, target, err)
	}
	return nil
}

// NodeUnpublishVolume unmounts and removes the target; an absent target is
// already unpublished.
func (d *Driver) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if id == "" || target == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID and target path are required")
	}
	if _, err := d.known(id); err != nil {
		return nil, err
	}
	if !d.cfg.Profile.visible(d.cfg.KubeletDir, target) {
		return &csi.NodeUnpublishVolumeResponse{}, nil
	}
	if err := unmountIfMounted(target); err != nil {
		return nil, err
	}
	if err := os.Remove(target); err != nil && !os.IsNotExist(err) {
		return nil, status.Errorf(codes.Internal, "remove target: %v", err)
	}
	if d.cfg.Profile.NoStage {
		loops.Lock()
		err := detachUnused(d.imagePath(id))
		loops.Unlock()
		if err != nil {
			return nil, err
		}
	}
	return &csi.NodeUnpublishVolumeResponse{}, d.recordPublished(id, target, false)
}

func unmountIfMounted(path string) error {
	mounted, err := mountinfo.Mounted(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return status.Errorf(codes.Internal, "inspect %s: %v", path, err)
	}
	if mounted {
		if err := unix.Unmount(path, 0); err != nil {
			return status.Errorf(codes.Internal, "unmount %s: %v", path, err)
		}
	}
	return nil
}
