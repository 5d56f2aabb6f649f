package driver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	defaultSize = 1 << 30
	minSize     = 16 << 20 // the smallest useful ext4 with a journal
)

// ControllerGetCapabilities lists what the controller does.
func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	caps := []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
	}
	if d.cfg.Profile.AttachRequired {
		caps = append(caps, csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME)
	}
	resp := &csi.ControllerGetCapabilitiesResponse{}
	for _, c := range caps {
		resp.Capabilities = append(resp.Capabilities, &csi.ControllerServiceCapability{
			Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: c}},
		})
	}
	return resp, nil
}

// checkCapabilities refuses access modes a loop-mounted ext4 cannot serve
// (several writers on several nodes).
func checkCapabilities(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	for _, c := range caps {
		if c.GetBlock() == nil && c.GetMount() == nil {
			return status.Error(codes.InvalidArgument, "access type block or mount is required")
		}
		switch c.GetAccessMode().GetMode() {
		case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER,
			csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:
		default:
			return status.Errorf(codes.InvalidArgument, "access mode %v is not supported", c.GetAccessMode().GetMode())
		}
	}
	return nil
}

// volumeSize picks the size for a capacity range.
func volumeSize(r *csi.CapacityRange) (int64, error) {
	size := r.GetRequiredBytes()
	if size == 0 {
		size = defaultSize
		if l := r.GetLimitBytes(); l > 0 && l < size {
			size = l
		}
	}
	size = max(size, minSize)
	if l := r.GetLimitBytes(); l > 0 && size > l {
		return 0, status.Errorf(codes.OutOfRange, "size %d exceeds the limit %d (the smallest volume is %d bytes)", size, l, minSize)
	}
	return size, nil
}

// idFor derives a stable ID from a name, so a repeated create finds its
// volume even after a crash between image creation and the state update.
func idFor(prefix, name string) string {
	sum := sha256.Sum256([]byte(name))
	return prefix + hex.EncodeToString(sum[:10])
}

// CreateVolume makes an image (empty ext4, or a copy of a snapshot or a
// volume), idempotent by name.
func (d *Driver) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	size, err := volumeSize(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	src, srcKey := req.GetVolumeContentSource(), ""
	switch {
	case src.GetSnapshot() != nil:
		srcKey = "snapshot:" + src.GetSnapshot().GetSnapshotId()
	case src.GetVolume() != nil:
		srcKey = "volume:" + src.GetVolume().GetVolumeId()
	}
	node := preferredNode(req.GetAccessibilityRequirements())
	var vol *volume
	err = d.store.update(func(st *state) error {
		if d.cfg.Profile.SourceNodeOnly && src != nil {
			var err error
			if node, err = sourceNode(st, src, req.GetAccessibilityRequirements()); err != nil {
				return err
			}
		}
		for _, v := range st.Volumes {
			if v.Name != req.GetName() {
				continue
			}
			if v.Size < req.GetCapacityRange().GetRequiredBytes() ||
				(req.GetCapacityRange().GetLimitBytes() > 0 && v.Size > req.GetCapacityRange().GetLimitBytes()) || v.Source != srcKey {
				return status.Errorf(codes.AlreadyExists, "volume %q exists with another size or source", req.GetName())
			}
			vol = v
			return nil
		}
		id := idFor("vol-", req.GetName())
		basis, err := d.basisImage(st, src)
		if err != nil {
			return err
		}
		if err := d.makeImage(id, basis, size); err != nil {
			return err
		}
		vol = &volume{ID: id, Name: req.GetName(), Size: size, Node: node, Source: srcKey, Shared: multiNode(req.GetVolumeCapabilities())}
		st.Volumes[id] = vol
		return nil
	})
	if err != nil {
		return nil, err
	}
	resp := &csi.Volume{VolumeId: vol.ID, CapacityBytes: vol.Size, ContentSource: src}
	if vol.Node != "" {
		resp.AccessibleTopology = []*csi.Topology{{Segments: map[string]string{TopologyKey: vol.Node}}}
	}
	return &csi.CreateVolumeResponse{Volume: resp}, nil
}

func preferredNode(req *csi.TopologyRequirement) string {
	for _, list := range [][]*csi.Topology{req.GetPreferred(), req.GetRequisite()} {
		for _, t := range list {
			if n := t.GetSegments()[TopologyKey]; n != "" {
				return n
			}
		}
	}
	return ""
}

// sourceNode is where a volume copied from src must be made for a
// SourceNodeOnly profile: on the source volume's node, which the request's
// accessibility requirements must allow (TopoLVM
// internal/driver/controller.go:241-246). A source placed nowhere, or no
// requirements, leaves the choice to preferredNode.
func sourceNode(st *state, src *csi.VolumeContentSource, req *csi.TopologyRequirement) (string, error) {
	id := src.GetVolume().GetVolumeId()
	if s := src.GetSnapshot(); s != nil {
		if snap := st.Snapshots[s.GetSnapshotId()]; snap != nil {
			id = snap.SourceID
		}
	}
	v := st.Volumes[id]
	if v == nil || v.Node == "" {
		return preferredNode(req), nil
	}
	if len(req.GetRequisite())+len(req.GetPreferred()) == 0 {
		return v.Node, nil
	}
	for _, t := range append(req.GetRequisite(), req.GetPreferred()...) {
		if t.GetSegments()[TopologyKey] == v.Node {
			return v.Node, nil
		}
	}
	return "", status.Errorf(codes.InvalidArgument, "cannot find source volume's node '%s' in accessibility_requirements", v.Node)
}

// multiNode says whether capabilities ask for access from several nodes.
func multiNode(caps []*csi.VolumeCapability) bool {
	for _, c := range caps {
		if strings.HasPrefix(c.GetAccessMode().GetMode().String(), "MULTI_NODE_") {
			return true
		}
	}
	return false
}

// basisImage is the image a new volume copies, if any.
func (d *Driver) basisImage(st *state, src *csi.VolumeContentSource) (string, error) {
	switch {
	case src.GetSnapshot() != nil:
		id := src.GetSnapshot().GetSnapshotId()
		if st.Snapshots[id] == nil {
			return "", status.Errorf(codes.NotFound, "snapshot %q not found", id)
		}
		return d.snapshotPath(id), nil
	case src.GetVolume() != nil:
		id := src.GetVolume().GetVolumeId()
		if st.Volumes[id] == nil {
			return "", status.Errorf(codes.NotFound, "volume %q not found", id)
		}
		return d.imagePath(id), nil
	}
	return "", nil
}

// makeImage writes the volume's image: a copy of basis grown to size, or a
// fresh ext4 of size.
func (d *Driver) makeImage(id, basis string, size int64) error {
	img := d.imagePath(id)
	tmp := img + ".tmp"
	if basis != "" {
		if err := copyImage(basis, tmp); err != nil {
			return status.Errorf(codes.Internal, "copy image: %v", err)
		}
	}
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return status.Errorf(codes.Internal, "create image: %v", err)
	}
	st, _ := f.Stat()
	if st.Size() < size {
		err = f.Truncate(size)
	}
	f.Close()
	if err != nil {
		return status.Errorf(codes.Internal, "size image: %v", err)
	}
	if basis == "" {
		err = run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", tmp)
	} else {
		err = run("resize2fs", "-f", tmp)
	}
	if err != nil {
		os.Remove(tmp)
		return status.Errorf(codes.Internal, "format image: %v", err)
	}
	if err := os.Rename(tmp, img); err != nil {
		return status.Errorf(codes.Internal, "place image: %v", err)
	}
	return nil
}

// DeleteVolume removes a volume; deleting an unknown volume succeeds.
func (d *Driver) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is required")
	}
	err := d.store.update(func(st *state) error {
		if err := os.Remove(d.imagePath(req.GetVolumeId())); err != nil && !os.IsNotExist(err) {
			return status.Errorf(codes.Internal, "remove image: %v", err)
		}
		delete(st.Volumes, req.GetVolumeId())
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// ValidateVolumeCapabilities confirms what checkCapabilities accepts.
func (d *Driver) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	if err := d.store.view(func(st *state) error {
		if st.Volumes[req.GetVolumeId()] == nil {
			return status.Errorf(codes.NotFound, "volume %q not found", req.GetVolumeId())
		}
		return nil
	}); err != nil {
		return nil, err
	}
	resp := &csi.ValidateVolumeCapabilitiesResponse{}
	if checkCapabilities(req.GetVolumeCapabilities()) == nil {
		resp.Confirmed = &csi.ValidateVolumeCapabilitiesResponse_Confirmed{VolumeCapabilities: req.GetVolumeCapabilities()}
	} else {
		resp.Message = "unsupported access mode"
	}
	return resp, nil
}

// GetCapacity reports what is left of the configured capacity.
func (d *Driver) GetCapacity(context.Context, *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	var used int64
	_ = d.store.view(func(st *state) error {
		for _, v := range st.Volumes {
			used += v.Size
		}
		return nil
	})
	return &csi.GetCapacityResponse{AvailableCapacity: max(d.cfg.Capacity-used, 0)}, nil
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, out)
	}
	return nil
}
