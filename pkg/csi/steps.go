package csi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	csispec "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/ferrysync/ferry/pkg/mount"
)

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
