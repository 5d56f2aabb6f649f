package csi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	csispec "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"

	"github.com/ferrysync/ferry/pkg/kubelet"
	"github.com/ferrysync/ferry/pkg/mount"
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
	// MultiNode says that the PV's access modes allow more than one node.
	MultiNode bool
	// Reuse is an existing mount of the volume, kubelet's for a pod on this
	// node (see mount.KubeletMount), to bind read-only instead of
	// publishing the volume a second time. Only for ReadOnly.
	Reuse string
}

// FromPersistentVolume is what a CSI PersistentVolume itself says about
// publishing it: driver, handle, fsType, mount options, attributes, Block,
// and whether its access modes allow more than one node. The caller adds
// secrets, the attachment and how Ferry wants it (ReadOnly, Reuse).
func FromPersistentVolume(pv *corev1.PersistentVolume) Volume {
	src := pv.Spec.CSI
	v := Volume{Driver: src.Driver, Handle: src.VolumeHandle, FSType: src.FSType, MountOptions: pv.Spec.MountOptions,
		Attributes: src.VolumeAttributes, Block: pv.Spec.VolumeMode != nil && *pv.Spec.VolumeMode == corev1.PersistentVolumeBlock}
	for _, m := range pv.Spec.AccessModes {
		if m == corev1.ReadWriteMany || m == corev1.ReadOnlyMany {
			v.MultiNode = true
		}
	}
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
	Reuse      string `json:"reuse,omitempty"`
}

const recordFile = "volume.json"

// Publisher publishes volumes for the agent under a root directory of its
// own, one directory per volume: <root>/<name>/{volume.json,stage,mount|device}.
// The paths are stable (never a pod's), so a restarted agent finds its
// mounts where it left them. Publishing and taking down are idempotent and
// may be repeated after a crash at any point; Recover takes down what is no
// longer wanted.
type Publisher struct {
	root, kubeletRoot string
	log               logr.Logger
	mounter           *mount.Mounter

	mu      sync.Mutex
	clients map[string]*Client
}

// NewPublisher returns a Publisher keeping its volumes under root and finding
// node plugins under kubeletRoot. The root must be where the node plugins see
// the same paths (below the kubelet root, which plugin containers mount with
// bidirectional propagation).
func NewPublisher(root, kubeletRoot string, log logr.Logger, opts ...PublisherOption) *Publisher {
	p := &Publisher{root: root, kubeletRoot: kubeletRoot, log: log, mounter: mount.New(), clients: map[string]*Client{}}
	for _, o := range opts {
		o(p)
	}
	return p
}

// PublisherOption changes how NewPublisher builds a Publisher.
type PublisherOption func(*Publisher)

// WithMounter makes the Publisher bind and unmount through m instead of the
// system's mount tools.
func WithMounter(m *mount.Mounter) PublisherOption { return func(p *Publisher) { p.mounter = m } }

// DefaultRoot is the agent's directory under the kubelet root.
func DefaultRoot(kubeletRoot string) string {
	return filepath.Join(kubeletRoot, "plugins", "ferrysync.io", "volumes")
}

// Close drops the connections to node plugins.
func (p *Publisher) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for d, c := range p.clients {
		errs = append(errs, c.Close())
		delete(p.clients, d)
	}
	return errors.Join(errs...)
}

// Publish makes the volume available at the returned path: a directory, or
// a device file for a block volume. A volume published earlier under the
// same name in another way (read-write instead of read-only, another
// attachment, another volume) is taken down first.
func (p *Publisher) Publish(ctx context.Context, name string, v Volume) (string, error) {
	if err := checkName(name); err != nil {
		return "", err
	}
	if v.Reuse != "" && !v.ReadOnly {
		return "", fmt.Errorf("publish %s: reusing another mount is for read-only access only", name)
	}
	old, err := p.readRecord(name)
	if err != nil {
		return "", err
	}
	if old != nil && !old.matches(v) {
		p.log.Info("volume published differently before; taking it down first", "name", name)
		if err := p.run(ctx, name, p.teardownSteps(name, *old)); err != nil {
			return "", err
		}
	}
	if err := p.run(ctx, name, p.publishSteps(name, v)); err != nil {
		return "", err
	}
	return p.target(name, v.Block), nil
}

// Unpublish takes the volume down: unpublish, unstage, forget. Taking down
// what is not published succeeds.
func (p *Publisher) Unpublish(ctx context.Context, name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	rec, err := p.readRecord(name)
	if err != nil {
		return err
	}
	if rec == nil {
		return p.forgetOrphan(name)
	}
	return p.run(ctx, name, p.teardownSteps(name, *rec))
}

// Recover is for agent start: it takes down every volume under the root that
// keep does not claim, so that no mount survives a crash unless it is still
// wanted. Wanted volumes stay as they are; publishing them again completes
// whatever the crash interrupted.
func (p *Publisher) Recover(ctx context.Context, keep func(name string) bool) error {
	entries, err := os.ReadDir(p.root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list published volumes: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if !e.IsDir() || keep(e.Name()) {
			continue
		}
		p.log.Info("taking down a volume no assignment wants", "name", e.Name())
		if err := p.Unpublish(ctx, e.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// step is one idempotent action of publishing or taking down; the steps run
// in order, and a crash may fall between any two.
type step struct {
	name string
	run  func(ctx context.Context) error
}

func (p *Publisher) run(ctx context.Context, name string, steps []step) error {
	for _, s := range steps {
		if err := s.run(ctx); err != nil {
			return fmt.Errorf("%s volume %s: %w", s.name, name, err)
		}
	}
	return nil
}

func (p *Publisher) publishSteps(name string, v Volume) []step {
	target := p.target(name, v.Block)
	var c *Client
	rec := record{Driver: v.Driver, Handle: v.Handle, Block: v.Block, ReadOnly: v.ReadOnly, Attachment: v.Attachment, Reuse: v.Reuse}
	steps := []step{{"record", func(ctx context.Context) error {
		if v.Reuse == "" {
			var err error
			if c, err = p.client(ctx, v.Driver); err != nil {
				return err
			}
			rec.Staged = c.Stages()
		}
		return p.writeRecord(name, rec)
	}}}
	if v.Reuse != "" {
		return append(steps, step{"bind", func(context.Context) error {
			p.log.V(1).Info("binding an existing mount read-only instead of publishing again", "name", name, "mount", v.Reuse)
			return p.mounter.BindReadOnly(v.Reuse, target)
		}})
	}
	capability := v.capability()
	stage := p.stagePath(name)
	return append(steps,
		step{"stage", func(ctx context.Context) error {
			if !rec.Staged {
				return nil
			}
			if err := os.MkdirAll(stage, 0o750); err != nil {
				return fmt.Errorf("create staging path: %w", err)
			}
			_, err := c.node.NodeStageVolume(ctx, &csispec.NodeStageVolumeRequest{
				VolumeId: v.Handle, PublishContext: v.PublishContext, StagingTargetPath: stage,
				VolumeCapability: capability, Secrets: v.StageSecrets, VolumeContext: v.Attributes})
			return err
		}},
		step{"publish", func(ctx context.Context) error {
			req := &csispec.NodePublishVolumeRequest{
				VolumeId: v.Handle, PublishContext: v.PublishContext, TargetPath: target,
				VolumeCapability: capability, Readonly: v.ReadOnly, Secrets: v.PublishSecrets, VolumeContext: v.Attributes}
			if rec.Staged {
				req.StagingTargetPath = stage
			}
			if _, err := c.node.NodePublishVolume(ctx, req); err != nil {
				return err
			}
			return p.checkPublished(target, v.ReadOnly)
		}})
}

// checkPublished trusts no driver with read-only: a read-only publish that
// came back writable is made read-only in the agent's mount namespace (a
// node plugin pod's remount to read-only does not propagate here, only its
// bind does: found on the first real nodes), and one that stays writable is
// taken down again and reported.
func (p *Publisher) checkPublished(target string, readOnly bool) error {
	if !readOnly {
		return nil
	}
	ro, err := mount.ReadOnly(target)
	if err != nil {
		return err
	}
	if !ro && mount.MakeReadOnly(target) == nil {
		if ro, err = mount.ReadOnly(target); err != nil {
			return err
		}
	}
	if !ro {
		if err := p.mounter.Cleanup(target); err != nil {
			return err
		}
		return fmt.Errorf("the driver published %s writable although read-only was asked", target)
	}
	return nil
}

func (p *Publisher) teardownSteps(name string, rec record) []step {
	target, stage := p.target(name, rec.Block), p.stagePath(name)
	return []step{
		{"unpublish", func(ctx context.Context) error {
			if rec.Reuse == "" {
				c, err := p.client(ctx, rec.Driver)
				if err != nil {
					return err
				}
				if _, err := c.node.NodeUnpublishVolume(ctx, &csispec.NodeUnpublishVolumeRequest{VolumeId: rec.Handle, TargetPath: target}); err != nil {
					return err
				}
			}
			return p.mounter.Cleanup(target)
		}},
		{"unstage", func(ctx context.Context) error {
			if !rec.Staged {
				return nil
			}
			c, err := p.client(ctx, rec.Driver)
			if err != nil {
				return err
			}
			if _, err := c.node.NodeUnstageVolume(ctx, &csispec.NodeUnstageVolumeRequest{VolumeId: rec.Handle, StagingTargetPath: stage}); err != nil {
				return err
			}
			return p.mounter.Cleanup(stage)
		}},
		{"forget", func(context.Context) error { return p.forgetOrphan(name) }},
	}
}

// forgetOrphan removes a volume directory that has nothing mounted in it
// any more. It only ever removes single entries, never recursively: if
// anything is still mounted, removing fails instead of deleting data.
func (p *Publisher) forgetOrphan(name string) error {
	dir := filepath.Join(p.root, name)
	mounts, err := mount.Under(dir)
	if err != nil {
		return err
	}
	if len(mounts) > 0 {
		return fmt.Errorf("volume %s: %s is still mounted and has no record to unpublish it by; unmount it by hand", name, mounts[0])
	}
	var errs []error
	for _, f := range []string{recordFile + ".tmp", recordFile, "stage", "mount", "device", ""} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("forget volume %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

func (p *Publisher) client(ctx context.Context, driver string) (*Client, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.clients[driver]; c != nil {
		return c, nil
	}
	if err := kubelet.CheckName("driver", driver); err != nil {
		return nil, err
	}
	c, err := Dial(ctx, kubelet.PluginSocket(p.kubeletRoot, driver), p.log.WithValues("driver", driver))
	if err != nil {
		return nil, err
	}
	p.clients[driver] = c
	return c, nil
}

func (p *Publisher) target(name string, block bool) string {
	if block {
		return filepath.Join(p.root, name, "device")
	}
	return filepath.Join(p.root, name, "mount")
}

func (p *Publisher) stagePath(name string) string { return filepath.Join(p.root, name, "stage") }

func (p *Publisher) readRecord(name string) (*record, error) {
	b, err := os.ReadFile(filepath.Join(p.root, name, recordFile))
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
func (p *Publisher) writeRecord(name string, r record) error {
	dir := filepath.Join(p.root, name)
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

func (v Volume) capability() *csispec.VolumeCapability {
	mode := csispec.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	switch {
	case v.MultiNode && v.ReadOnly:
		mode = csispec.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
	case v.MultiNode:
		mode = csispec.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
	}
	c := &csispec.VolumeCapability{AccessMode: &csispec.VolumeCapability_AccessMode{Mode: mode}}
	if v.Block {
		c.AccessType = &csispec.VolumeCapability_Block{Block: &csispec.VolumeCapability_BlockVolume{}}
	} else {
		c.AccessType = &csispec.VolumeCapability_Mount{Mount: &csispec.VolumeCapability_MountVolume{FsType: v.FSType, MountFlags: v.MountOptions}}
	}
	return c
}

// checkName keeps a volume name one safe path element.
func checkName(name string) error { return kubelet.CheckName("volume", name) }
