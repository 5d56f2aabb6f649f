package csi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	csispec "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrysync/ferry/pkg/kubelet"
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

// stagingPath is where v is staged: kubelet's own path for the volume, so
// that a node never has two staging paths for it (the CSI spec allows one;
// csi-driver-host-path refuses a second, ceph RBD unmaps under the other
// on the first unstage).
func (p *Publisher) stagingPath(name string, v Volume) string {
	if v.Block {
		return p.root.legacyStagePath(name)
	}
	return kubelet.StagingPath(p.kubeletRoot, v.Driver, v.Handle)
}

func (p *Publisher) publishSteps(name string, v Volume) []step {
	target := p.root.target(name, v.Block)
	var c *Client
	rec := record{Driver: v.Driver, Handle: v.Handle, Block: v.Block, ReadOnly: v.ReadOnly, Attachment: v.Attachment, Reuse: v.Reuse}
	steps := []step{{"record", func(ctx context.Context) error {
		if v.Reuse == "" {
			var err error
			if c, err = p.client(ctx, v.Driver); err != nil {
				return err
			}
			if rec.Staged = c.Stages(); rec.Staged {
				rec.StagingPath = p.stagingPath(name, v)
			}
		}
		return p.root.writeRecord(name, rec)
	}}}
	if v.Reuse != "" {
		return append(steps, step{"bind", func(context.Context) error {
			p.log.V(1).Info("binding an existing mount read-only instead of publishing again", "name", name, "mount", v.Reuse)
			return p.mounter.BindReadOnly(v.Reuse, target)
		}})
	}
	stageOnce := func(ctx context.Context) error {
		if !rec.Staged {
			return nil
		}
		// As kubelet does, the staging directory is made by the caller
		// (the CSI spec's CO) and NodeStageVolume repeated on a volume
		// already staged there (by kubelet for a pod, or by an earlier
		// try) is a no-op for the plugin.
		if err := os.MkdirAll(rec.StagingPath, 0o750); err != nil {
			return fmt.Errorf("create staging path: %w", err)
		}
		_, err := c.node.NodeStageVolume(ctx, &csispec.NodeStageVolumeRequest{
			VolumeId: v.Handle, PublishContext: v.PublishContext, StagingTargetPath: rec.StagingPath,
			VolumeCapability: v.capability(c.caps), Secrets: v.StageSecrets, VolumeContext: v.Attributes})
		return err
	}
	return append(steps,
		step{"stage", stageOnce},
		step{"publish", func(ctx context.Context) error {
			// The target's parent is the caller's to make; the plugin makes
			// the target (csi-driver-host-path refuses a missing parent).
			if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
				return fmt.Errorf("create target's parent: %w", err)
			}
			req := &csispec.NodePublishVolumeRequest{
				VolumeId: v.Handle, PublishContext: v.PublishContext, TargetPath: target,
				VolumeCapability: v.capability(c.caps), Readonly: v.ReadOnly, Secrets: v.PublishSecrets, VolumeContext: v.Attributes}
			if rec.Staged {
				req.StagingTargetPath = rec.StagingPath
			}
			_, err := c.node.NodePublishVolume(ctx, req)
			for try := 1; try < stageTries && rec.Staged && status.Code(err) == codes.FailedPrecondition; try++ {
				// Kubelet unstaged the shared staging path between the two
				// steps (its pod left; nothing of Ferry's mounted from it
				// yet, so its reference check let it): stage again.
				p.log.V(1).Info("the volume was unstaged before it was published; staging it again", "name", name, "error", err.Error())
				if err = stageOnce(ctx); err == nil {
					_, err = c.node.NodePublishVolume(ctx, req)
				}
			}
			if err != nil {
				return err
			}
			return p.checkPublished(target, v.ReadOnly)
		}})
}

// stageTries bounds how often publishing stages again a volume that was
// unstaged under it.
const stageTries = 3

// checkPublished trusts no driver's word that the volume is published: a
// plugin that mounts inside its own container at a path it does not share
// with the host reports success and leaves nothing at the target, and a
// destination would then fail every sync at "open volume". And it trusts
// no driver with read-only: a read-only publish that came back writable is
// made read-only in the agent's mount namespace (a node plugin pod's
// remount to read-only does not propagate here, only its bind does: found
// on the first real nodes), and one that stays writable is taken down
// again and reported.
func (p *Publisher) checkPublished(target string, readOnly bool) error {
	mounted, err := mount.IsMountPoint(target)
	if err != nil {
		return err
	}
	if !mounted {
		return fmt.Errorf("the CSI node plugin reported the volume published at %s, but nothing is mounted there as the agent sees it: "+
			"the plugin must see %s at the same path, mounted with Bidirectional propagation, as kubelet needs too", target, filepath.Dir(filepath.Dir(target)))
	}
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

func (p *Publisher) teardownSteps(t tree, name string, rec record) []step {
	target, stage, legacy := t.target(name, rec.Block), rec.StagingPath, rec.StagingPath == ""
	if legacy {
		stage = t.legacyStagePath(name)
	}
	return []step{
		{"unpublish", func(ctx context.Context) error {
			if rec.Reuse == "" {
				c, err := p.client(ctx, rec.Driver)
				if err != nil {
					return err
				}
				if _, err := c.node.NodeUnpublishVolume(ctx, &csispec.NodeUnpublishVolumeRequest{VolumeId: rec.Handle, TargetPath: target}); ignoreGone(err) != nil {
					return err
				}
			}
			return p.mounter.Cleanup(target)
		}},
		{"unstage", func(ctx context.Context) error {
			if !rec.Staged {
				return nil
			}
			if !legacy {
				keep, err := p.othersUse(stage)
				if err != nil || keep != "" {
					if keep != "" {
						p.log.V(1).Info("leaving the volume staged", "name", name, "staging", stage, "why", keep)
					}
					return err
				}
			}
			c, err := p.client(ctx, rec.Driver)
			if err != nil {
				return err
			}
			if _, err := c.node.NodeUnstageVolume(ctx, &csispec.NodeUnstageVolumeRequest{VolumeId: rec.Handle, StagingTargetPath: stage}); ignoreGone(err) != nil {
				return err
			}
			if err := p.mounter.Cleanup(stage); err != nil || legacy {
				return err
			}
			return removeIfEmpty(filepath.Dir(stage))
		}},
		{"forget", func(context.Context) error { return t.forgetOrphan(name) }},
	}
}

// ignoreGone treats NotFound from an unpublish or unstage as done: the
// driver no longer knows the volume (it was deleted meanwhile), so nothing
// of it is the driver's to take down, and what is left mounted is removed
// by the agent's own cleanup. csi-driver-host-path answers so
// (pkg/hostpath/nodeserver.go:226-229); without this a deleted volume
// would keep its assignment from ever going.
func ignoreGone(err error) error {
	if status.Code(err) == codes.NotFound {
		return nil
	}
	return err
}

// othersUse says why a volume staged at kubelet's staging path must stay
// staged once Ferry is done with it ("" if it need not).
func (p *Publisher) othersUse(stage string) (string, error) {
	byKubelet, err := kubelet.StagedByKubelet(stage)
	if err != nil {
		return "", err
	}
	refs, err := p.mounter.Refs(stage)
	if err != nil {
		return "", err
	}
	return keepStaged(byKubelet, refs), nil
}

// keepStaged is the rule for sharing a staged volume with kubelet: kubelet
// unstages what it staged, once its pods are done with it (and not while
// another mount of the staging path remains: it checks, as Ferry does here),
// so Ferry unstages only a volume that kubelet has not staged and that
// nothing else mounts from.
func keepStaged(stagedByKubelet bool, refs []string) string {
	switch {
	case stagedByKubelet:
		return "kubelet staged it for a pod and unstages it when its pods are done"
	case len(refs) > 0:
		return fmt.Sprintf("still mounted from at %v", refs)
	}
	return ""
}

// removeIfEmpty removes a directory that is empty; one that is not (kubelet
// wrote its vol_data.json there meanwhile) or is gone stays as it is.
func removeIfEmpty(dir string) error {
	err := os.Remove(dir)
	if err == nil || errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
		return nil
	}
	return fmt.Errorf("remove %s: %w", dir, err)
}

// forgetOrphan removes a volume directory that has nothing mounted in it
// any more. It only ever removes single entries, never recursively: if
// anything is still mounted, removing fails instead of deleting data.
func (t tree) forgetOrphan(name string) error {
	dir := t.dir(name)
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
