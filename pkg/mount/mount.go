// Package mount is the agent's small toolbox for host mounts: a mount-point
// test that sees bind mounts (mount-utils' cheap check compares device
// numbers and misses a bind of a directory on the same filesystem), read-only
// bind mounts, cleanup that is safe to repeat, and the lookup of kubelet's own
// mount of a PersistentVolume so that copyMethod Direct can reuse it instead
// of staging the volume a second time on the node.
//
// It is thin on purpose: mounting goes through k8s.io/mount-utils, mount
// table reads through github.com/moby/sys/mountinfo.
package mount

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	mountutils "k8s.io/mount-utils"
)

// Mounter mounts and unmounts through a mount-utils Interface: the
// system's mount(8) and umount(8) as kubelet runs them (New), or any other
// implementation a caller or test passes (NewWith). Reads of the mount
// table (IsMountPoint, Under, ReadOnly) need no Mounter.
type Mounter struct {
	m mountutils.Interface
}

// New returns a Mounter that runs the system's mount tools, as kubelet
// does.
func New() *Mounter { return NewWith(mountutils.New("")) }

// NewWith returns a Mounter over m.
func NewWith(m mountutils.Interface) *Mounter { return &Mounter{m: m} }

// IsMountPoint reports whether path is a mount point, bind mounts included. A
// path that does not exist is not one.
func IsMountPoint(path string) (bool, error) {
	mounted, err := mountinfo.Mounted(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("check mount point %s: %w", path, err)
	}
	return mounted, nil
}

// BindReadOnly binds src at dst read-only, nosuid and nodev, creating dst as
// a directory or, when src is a device or file, as an empty file. Nothing
// written through dst can change src, and nothing there can gain privileges.
// It is idempotent: an existing mount at dst is made read-only again.
func (mt *Mounter) BindReadOnly(src, dst string) error {
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	if err := makeTarget(dst, st.IsDir()); err != nil {
		return err
	}
	mounted, err := IsMountPoint(dst)
	if err != nil {
		return err
	}
	if !mounted {
		// mount-utils binds, then remounts with the flags: a bind mount
		// ignores them on the first call.
		if err := mt.m.Mount(src, dst, "", []string{"bind", "ro", "nosuid", "nodev"}); err != nil {
			return fmt.Errorf("bind %s at %s read-only: %w", src, dst, err)
		}
		return nil
	}
	// Already bound (by an earlier call that may have stopped half-way):
	// only remount, or another bind would stack on top.
	return MakeReadOnly(dst)
}

// MakeReadOnly makes the mount at path read-only, nosuid and nodev in this
// mount namespace only: a bind remount changes one mount's flags, not its
// filesystem's, and does not propagate. That is also why it is needed: a
// node plugin in another mount namespace (a pod) publishes read-only with a
// bind and then a remount, and propagation carries the bind to the agent
// but not the remount's flags.
func MakeReadOnly(path string) error {
	if err := unix.Mount("", path, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return fmt.Errorf("make %s read-only: %w", path, err)
	}
	return nil
}

// makeTarget creates a mount target: a directory, or an empty file for a
// device or file source.
func makeTarget(path string, dir bool) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return fmt.Errorf("create parent of %s: %w", path, err)
	}
	if dir {
		if err := os.Mkdir(path, 0o750); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("create %s: %w", path, err)
		}
		return nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	return f.Close()
}

// Cleanup unmounts everything stacked at path and removes it. A path that is
// already gone is clean; repeating Cleanup is harmless.
func (mt *Mounter) Cleanup(path string) error {
	for {
		mounted, err := IsMountPoint(path)
		if err != nil {
			return err
		}
		if !mounted {
			break
		}
		if err := mt.m.Unmount(path); err != nil {
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// Under lists the mount points at or below root, deepest first, so that
// unmounting them in order never hits a busy parent.
func Under(root string) ([]string, error) {
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(root))
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	var paths []string
	for _, in := range infos {
		paths = append(paths, in.Mountpoint)
	}
	sort.Slice(paths, func(i, j int) bool { return len(paths[i]) > len(paths[j]) })
	return paths, nil
}

// ReadOnly reports whether the mount at path is read-only.
func ReadOnly(path string) (bool, error) {
	infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(path))
	if err != nil {
		return false, fmt.Errorf("read mount table: %w", err)
	}
	if len(infos) == 0 {
		return false, fmt.Errorf("%s is not a mount point", path)
	}
	// The last entry is the top of the stack: the one a path lookup sees.
	return slices.Contains(strings.Split(infos[len(infos)-1].Options, ","), "ro"), nil
}

// Refs lists the other mounts of what is mounted at path (the same device
// and root: bind mounts of it, a pod's publish of a staged volume), as
// kubelet asks before it unstages a volume (GetDeviceMountRefs, which is
// mount-utils' GetMountRefs). A path that does not exist has none.
func (mt *Mounter) Refs(path string) ([]string, error) {
	refs, err := mt.m.GetMountRefs(path)
	if err != nil {
		return nil, fmt.Errorf("other mounts of %s: %w", path, err)
	}
	return refs, nil
}
