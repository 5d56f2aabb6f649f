package driver

// What a node instance checks and records of a volume in the shared state:
// the profile's access-mode rules, whether it is known and attached, and
// where each node staged and published it (the rules of one staging path
// and of one mount per volume read these).

import (
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// nodeVolume is the volume to stage or publish with capability c, after
// the profile's access-mode rules.
func (d *Driver) nodeVolume(id string, c *csi.VolumeCapability) (*volume, error) {
	var vol *volume
	err := d.store.view(func(st *state) error {
		if vol = st.Volumes[id]; vol == nil {
			return status.Errorf(codes.NotFound, "volume %q not found", id)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	mode := c.GetAccessMode().GetMode()
	p := d.cfg.Profile
	if p.OnlySingleNodeWriter && mode != csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER {
		return nil, status.Errorf(codes.FailedPrecondition, "unsupported access mode: %s (%d)", mode, mode)
	}
	if p.SharedForMultiNode && !vol.Shared && strings.HasPrefix(mode.String(), "MULTI_NODE_") {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s requires shared access but is not marked for shared use", id)
	}
	return vol, nil
}

// known is a volume for unpublish and unstage: an unknown one has nothing
// to take down, which most drivers answer with success and
// UnknownNotFound profiles with NotFound.
func (d *Driver) known(id string) (*volume, error) {
	vol := &volume{}
	err := d.store.view(func(st *state) error {
		if v := st.Volumes[id]; v != nil {
			vol = v
		} else if d.cfg.Profile.UnknownNotFound {
			return status.Errorf(codes.NotFound, "volume id %s does not exist in the volumes list", id)
		}
		return nil
	})
	return vol, err
}

func (d *Driver) recordStaged(id, staging string) error {
	return d.store.update(func(st *state) error {
		if v := st.Volumes[id]; v != nil {
			if v.Staged == nil {
				v.Staged = map[string]string{}
			}
			v.Staged[d.cfg.NodeID] = staging
		}
		return nil
	})
}

func (d *Driver) recordUnstaged(id string) error {
	return d.store.update(func(st *state) error {
		if v := st.Volumes[id]; v != nil {
			delete(v.Staged, d.cfg.NodeID)
		}
		return nil
	})
}

func (d *Driver) recordPublished(id, target string, published bool) error {
	return d.store.update(func(st *state) error {
		v := st.Volumes[id]
		if v == nil {
			return nil
		}
		if v.Published == nil {
			v.Published = map[string][]string{}
		}
		list := slices.DeleteFunc(v.Published[d.cfg.NodeID], func(t string) bool { return t == target })
		if published {
			list = append(list, target)
		}
		v.Published[d.cfg.NodeID] = list
		return nil
	})
}

// published lists the volume's targets on node.
func (v *volume) published(node string) []string { return v.Published[node] }

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
