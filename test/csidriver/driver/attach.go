package driver

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ControllerPublishVolume attaches a volume to a node (attach-required mode).
func (d *Driver) ControllerPublishVolume(_ context.Context, req *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	if req.GetVolumeId() == "" || req.GetNodeId() == "" || req.GetVolumeCapability() == nil {
		return nil, status.Error(codes.InvalidArgument, "volume ID, node ID and capability are required")
	}
	err := d.store.update(func(st *state) error {
		v := st.Volumes[req.GetVolumeId()]
		if v == nil {
			return status.Errorf(codes.NotFound, "volume %q not found", req.GetVolumeId())
		}
		if !st.Nodes[req.GetNodeId()] {
			return status.Errorf(codes.NotFound, "node %q not found", req.GetNodeId())
		}
		if limit := d.cfg.Profile.MaxVolumesPerNode; limit > 0 && !v.Attached[req.GetNodeId()] && st.attachedTo(req.GetNodeId()) >= int(limit) {
			// As a cloud refuses one disk too many (csi-driver-host-path's
			// --attach-limit: controllerserver.go:304-331).
			return status.Errorf(codes.ResourceExhausted, "Cannot attach any more volumes to this node (%d attached)", limit)
		}
		if v.Attached == nil {
			v.Attached = map[string]bool{}
		}
		v.Attached[req.GetNodeId()] = true
		return nil
	})
	if err != nil {
		return nil, err
	}
	pc := map[string]string{"image": d.imagePath(req.GetVolumeId())}
	if d.cfg.Profile.DevicePath {
		pc["devicePath"] = d.imagePath(req.GetVolumeId())
	}
	return &csi.ControllerPublishVolumeResponse{PublishContext: pc}, nil
}

// ControllerUnpublishVolume detaches; detaching what is not attached succeeds.
func (d *Driver) ControllerUnpublishVolume(_ context.Context, req *csi.ControllerUnpublishVolumeRequest) (*csi.ControllerUnpublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is required")
	}
	gone := false
	err := d.store.update(func(st *state) error {
		if v := st.Volumes[req.GetVolumeId()]; v != nil {
			delete(v.Attached, req.GetNodeId())
			gone = len(v.Attached) == 0
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if gone && d.cfg.Profile.DevicePath {
		// The disk leaves the node (EBS calls EC2 DetachDisk,
		// pkg/driver/controller.go:584-615): whatever still has it
		// mounted gets I/O errors from now on.
		loops.Lock()
		defer loops.Unlock()
		if err := revoke(d.imagePath(req.GetVolumeId())); err != nil {
			return nil, err
		}
	}
	return &csi.ControllerUnpublishVolumeResponse{}, nil
}

// attachedTo counts the volumes attached to node.
func (st *state) attachedTo(node string) int {
	n := 0
	for _, v := range st.Volumes {
		if v.Attached[node] {
			n++
		}
	}
	return n
}
