package csi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	csispec "github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
)

// Volume says what to publish and how.
type Volume struct {
	// Driver is the CSI driver name; its node plugin is found by
	// SocketPath.
	Driver string
	// Handle is the CSI volume ID.
	Handle string
	// FSType and MountOptions are the PV's.
	FSType       string
	MountOptions []string
	// Block publishes a device file instead of mounting a filesystem.
	Block bool
	// Attributes are the PV's volume attributes (the CSI volume context).
	Attributes map[string]string
	// StageSecrets and PublishSecrets are the contents of the PV's
	// nodeStageSecretRef and nodePublishSecretRef. They go to the plugin
	// and nowhere else: not to disk, not to a log.
	StageSecrets, PublishSecrets map[string]string
	// PublishContext is the VolumeAttachment's attachment metadata, for
	// drivers that require attach.
	PublishContext map[string]string
	// Attachment identifies the attachment PublishContext came from (the
	// VolumeAttachment's UID). When it changes, the volume was detached and
	// attached again, and is staged anew.
	Attachment string
	// ReadOnly publishes the volume read-only (every source).
	ReadOnly bool
	// AccessModes are the PV's; the first one is what the plugin is told
	// (accessMode), as kubelet tells it.
	AccessModes []corev1.PersistentVolumeAccessMode
	// Reuse is an existing mount of the volume, kubelet's for a pod on this
	// node (see mount.KubeletMount), to bind read-only instead of
	// publishing the volume a second time. Only for ReadOnly.
	Reuse string
}

// FromPersistentVolume is what a CSI PersistentVolume itself says about
// publishing it: driver, handle, fsType, mount options, attributes, Block
// and access modes. The caller adds
// secrets, the attachment and how Ferry wants it (ReadOnly, Reuse).
func FromPersistentVolume(pv *corev1.PersistentVolume) Volume {
	src := pv.Spec.CSI
	v := Volume{Driver: src.Driver, Handle: src.VolumeHandle, FSType: src.FSType, MountOptions: pv.Spec.MountOptions,
		Attributes: src.VolumeAttributes, Block: pv.Spec.VolumeMode != nil && *pv.Spec.VolumeMode == corev1.PersistentVolumeBlock,
		AccessModes: pv.Spec.AccessModes}
	return v
}

// record is what stays on disk about a volume Ferry published: enough to take
// it down again after a crash, without the assignment and without the PV. It
// is written before anything is mounted and removed after everything is
// unmounted, so a mount under the root always has a record beside it. It
// holds no secret.
type record struct {
	Driver     string `json:"driver"`
	Handle     string `json:"handle"`
	Block      bool   `json:"block,omitempty"`
	ReadOnly   bool   `json:"readOnly,omitempty"`
	Attachment string `json:"attachment,omitempty"`
	Staged     bool   `json:"staged,omitempty"`
	// StagingPath is where the volume was staged; empty in records of
	// agents that staged in the volume's own directory
	// (tree.legacyStagePath).
	StagingPath string `json:"stagingPath,omitempty"`
	Reuse       string `json:"reuse,omitempty"`
}

const recordFile = "volume.json"

func (t tree) readRecord(name string) (*record, error) {
	b, err := os.ReadFile(filepath.Join(t.dir(name), recordFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read record of volume %s: %w", name, err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("read record of volume %s: %w", name, err)
	}
	return &r, nil
}

// writeRecord replaces the record atomically and durably: a crash leaves
// the old record or the new one, never half of one.
func (t tree) writeRecord(name string, r record) error {
	dir := t.dir(name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create volume directory: %w", err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode record: %w", err)
	}
	tmp := filepath.Join(dir, recordFile+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, recordFile))
	}
	if err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	return nil
}

// matches says whether a volume published as r is what v asks for.
func (r record) matches(v Volume) bool {
	return r.Driver == v.Driver && r.Handle == v.Handle && r.Block == v.Block && r.ReadOnly == v.ReadOnly &&
		r.Attachment == v.Attachment && r.Reuse == v.Reuse
}

// capability is the volume capability kubelet would send this plugin for
// the volume, so that a driver strict about access modes (Longhorn refuses
// MULTI_NODE_* for a volume that is not shared, ceph-csi's RBD for a
// filesystem) sees from Ferry exactly what it sees from kubelet. A
// read-only publish is the request's Readonly flag, as kubelet sends it,
// not another access mode.
func (v Volume) capability(caps nodeCaps) *csispec.VolumeCapability {
	first := corev1.ReadWriteOnce // kubelet's default for a PV without modes
	if len(v.AccessModes) > 0 {
		first = v.AccessModes[0]
	}
	c := &csispec.VolumeCapability{AccessMode: &csispec.VolumeCapability_AccessMode{Mode: accessMode(first, caps.singleNodeMultiWriter)}}
	if v.Block {
		c.AccessType = &csispec.VolumeCapability_Block{Block: &csispec.VolumeCapability_BlockVolume{}}
	} else {
		c.AccessType = &csispec.VolumeCapability_Mount{Mount: &csispec.VolumeCapability_MountVolume{FsType: v.FSType, MountFlags: v.MountOptions}}
	}
	return c
}

// accessMode maps a PV's first access mode as kubelet does:
// asCSIAccessModeV1 and, for a plugin with the SINGLE_NODE_MULTI_WRITER node
// capability, asSingleNodeMultiWriterCapableCSIAccessModeV1
// (pkg/volume/csi/csi_client.go, v1.37.2, lines 518-546); kubelet sends
// PV.Spec.AccessModes[0] (csi_attacher.go line 362, csi_mounter.go line
// 178).
func accessMode(m corev1.PersistentVolumeAccessMode, singleNodeMultiWriter bool) csispec.VolumeCapability_AccessMode_Mode {
	switch m {
	case corev1.ReadWriteOnce:
		if singleNodeMultiWriter {
			return csispec.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER
		}
		return csispec.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	case corev1.ReadWriteOncePod:
		if singleNodeMultiWriter {
			return csispec.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
		}
		return csispec.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	case corev1.ReadOnlyMany:
		return csispec.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
	case corev1.ReadWriteMany:
		return csispec.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
	}
	return csispec.VolumeCapability_AccessMode_UNKNOWN
}
