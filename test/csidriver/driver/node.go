package driver

import (
	"context"
	"os"
	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// NodeGetInfo names this node and its topology.
func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	if d.cfg.NodeID == "" {
		return nil, status.Error(codes.FailedPrecondition, "this instance serves no node")
	}
	return &csi.NodeGetInfoResponse{
		NodeId:             d.cfg.NodeID,
		AccessibleTopology: &csi.Topology{Segments: map[string]string{TopologyKey: d.cfg.NodeID}},
	}, nil
}

// NodeGetCapabilities: the node stages (loop device, filesystem mount) and
// publishes (bind mounts).
func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{Capabilities: []*csi.NodeServiceCapability{{
		Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME}},
	}}}, nil
}

// NodeStageVolume attaches the image to a loop device and, for a mount
// volume, mounts its ext4 at the staging path. A block volume records its
// device in the staging directory. Repeating it is a no-op.
func (d *Driver) NodeStageVolume(_ context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if id == "" || staging == "" || req.GetVolumeCapability() == nil {
		return nil, status.Error(codes.InvalidArgument, "volume ID, staging path and capability are required")
	}
	if err := d.requireVolume(id); err != nil {
		return nil, err
	}
	if d.cfg.AttachRequired {
		if err := d.requireAttached(id, req.GetPublishContext()); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return nil, status.Errorf(codes.Internal, "create staging path: %v", err)
	}
	if req.GetVolumeCapability().GetBlock() == nil {
		if mounted, err := mountinfo.Mounted(staging); err != nil {
			return nil, status.Errorf(codes.Internal, "inspect staging path: %v", err)
		} else if mounted {
			return &csi.NodeStageVolumeResponse{}, nil
		}
	}
	loops.Lock()
	defer loops.Unlock()
	dev, err := attach(d.imagePath(id))
	if err != nil {
		return nil, err
	}
	if req.GetVolumeCapability().GetBlock() != nil {
		if err := os.WriteFile(filepath.Join(staging, "device"), []byte(dev), 0o600); err != nil {
			return nil, status.Errorf(codes.Internal, "record device: %v", err)
		}
		return &csi.NodeStageVolumeResponse{}, nil
	}
	opts := strings.Join(req.GetVolumeCapability().GetMount().GetMountFlags(), ",")
	if err := unix.Mount(dev, staging, "ext4", 0, opts); err != nil {
		return nil, status.Errorf(codes.Internal, "mount %s at %s: %v", dev, staging, err)
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

// NodeUnstageVolume unmounts the staging path and frees the loop device
// unless another node's staging still mounts it.
// Unstaging what is not staged succeeds.
func (d *Driver) NodeUnstageVolume(_ context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if id == "" || staging == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID and staging path are required")
	}
	if err := unmountIfMounted(staging); err != nil {
		return nil, err
	}
	_ = os.Remove(filepath.Join(staging, "device"))
	loops.Lock()
	defer loops.Unlock()
	if err := detachUnused(d.imagePath(id)); err != nil {
		return nil, err
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// NodePublishVolume bind-mounts the staged volume (or its device, for a
// block volume) at the target path, read-only when asked.
func (d *Driver) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, staging, target := req.GetVolumeId(), req.GetStagingTargetPath(), req.GetTargetPath()
	if id == "" || staging == "" || target == "" || req.GetVolumeCapability() == nil {
		return nil, status.Error(codes.InvalidArgument, "volume ID, staging path, target path and capability are required")
	}
	if err := d.requireVolume(id); err != nil {
		return nil, err
	}
	src := staging
	if req.GetVolumeCapability().GetBlock() != nil {
		dev, err := os.ReadFile(filepath.Join(staging, "device"))
		if err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "volume is not staged: %v", err)
		}
		src = string(dev)
		if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
			return nil, status.Errorf(codes.Internal, "create target parent: %v", err)
		}
		if f, err := os.OpenFile(target, os.O_CREATE, 0o600); err != nil {
			return nil, status.Errorf(codes.Internal, "create target file: %v", err)
		} else {
			f.Close()
		}
	} else {
		if mounted, _ := mountinfo.Mounted(staging); !mounted {
			return nil, status.Error(codes.FailedPrecondition, "volume is not staged")
		}
		if err := os.MkdirAll(target, 0o750); err != nil {
			return nil, status.Errorf(codes.Internal, "create target: %v", err)
		}
	}
	if mounted, err := mountinfo.Mounted(target); err != nil {
		return nil, status.Errorf(codes.Internal, "inspect target: %v", err)
	} else if mounted {
		return &csi.NodePublishVolumeResponse{}, nil
	}
	if err := unix.Mount(src, target, "", unix.MS_BIND, ""); err != nil {
		return nil, status.Errorf(codes.Internal, "bind %s at %s: %v", src, target, err)
	}
	if req.GetReadonly() {
		if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			_ = unix.Unmount(target, 0)
			return nil, status.Errorf(codes.Internal, "make %s read-only: %v", target, err)
		}
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// NodeUnpublishVolume unmounts and removes the target; an absent target is
// already unpublished.
func (d *Driver) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if req.GetVolumeId() == "" || req.GetTargetPath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID and target path are required")
	}
	if err := unmountIfMounted(req.GetTargetPath()); err != nil {
		return nil, err
	}
	if err := os.Remove(req.GetTargetPath()); err != nil && !os.IsNotExist(err) {
		return nil, status.Errorf(codes.Internal, "remove target: %v", err)
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// requireAttached fails staging a volume that is not attached to this node,
// as a real disk would be missing from it.
func (d *Driver) requireAttached(id string, publishContext map[string]string) error {
	if publishContext["image"] == "" {
		return status.Error(codes.FailedPrecondition, "volume is not attached to this node (no publish context)")
	}
	return d.store.view(func(st *state) error {
		if v := st.Volumes[id]; v == nil || !v.Attached[d.cfg.NodeID] {
			return status.Errorf(codes.FailedPrecondition, "volume %q is not attached to node %q", id, d.cfg.NodeID)
		}
		return nil
	})
}

func (d *Driver) requireVolume(id string) error {
	return d.store.view(func(st *state) error {
		if st.Volumes[id] == nil {
			return status.Errorf(codes.NotFound, "volume %q not found", id)
		}
		return nil
	})
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
