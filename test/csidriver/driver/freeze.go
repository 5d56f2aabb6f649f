package driver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// The freeze ioctls (linux/fs.h: _IOWR('X', 119, int) and 120), which
// x/sys/unix does not name.
const (
	fiFreeze = 0xC0045877
	fiThaw   = 0xC0045878
)

// copyImage copies a volume's image to dst as a point-in-time copy, as a
// storage system's snapshot or clone is: a filesystem mounted from the image
// (a pod's, the agent's) is frozen for the copy, so the copy never holds a
// half-checkpointed journal. Copying a live ext4 image block by block
// without the freeze yields, now and then, a filesystem that fails to mount
// with "structure needs cleaning".
func copyImage(img, dst string) error {
	thaw, err := freeze(img)
	if err != nil {
		return err
	}
	err = run("cp", "--sparse=always", img, dst)
	return errors.Join(err, thaw())
}

// freeze freezes every filesystem mounted from a loop device backed by img
// and returns the function that thaws them.
func freeze(img string) (func() error, error) {
	devs, err := devicesOf(img)
	if err != nil {
		return nil, err
	}
	devices := map[string]bool{}
	for _, d := range devs {
		devices[d.Path] = true
	}
	var frozen []*os.File
	thaw := func() error {
		var errs []error
		for _, f := range frozen {
			if err := unix.IoctlSetInt(int(f.Fd()), fiThaw, 0); err != nil {
				errs = append(errs, fmt.Errorf("thaw %s: %w", f.Name(), err))
			}
			f.Close()
		}
		return errors.Join(errs...)
	}
	if len(devices) == 0 {
		return thaw, nil
	}
	paths, err := mountsOf(devices)
	if err != nil {
		return nil, err
	}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("open %s: %w", p, err), thaw())
		}
		if err := unix.IoctlSetInt(int(f.Fd()), fiFreeze, 0); err != nil {
			f.Close()
			return nil, errors.Join(fmt.Errorf("freeze %s: %w", p, err), thaw())
		}
		frozen = append(frozen, f)
	}
	return thaw, nil
}

// mountsOf returns, for each of devices mounted anywhere on the machine,
// one path to a mount of it that this process can open. A node of the
// real-node clusters has a mount namespace of its own, where kubelet
// mounts the volumes of its pods: a freeze that looked at this process's
// mounts only would miss them, and a clone would then lack what a pod
// wrote last (still in the page cache of the filesystem). So every mount
// namespace is read, through /proc/<pid>/mountinfo of one process in it,
// and its mounts are reached through /proc/<pid>/root. One path per device:
// binds, publishes and other namespaces' mounts share the superblock.
func mountsOf(devices map[string]bool) ([]string, error) {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("read /proc: %w", err)
	}
	namespaces := map[string]bool{}
	seen := map[string]bool{}
	var paths []string
	for _, e := range procs {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		pid := filepath.Join("/proc", e.Name())
		ns, err := os.Readlink(filepath.Join(pid, "ns", "mnt"))
		if err != nil || namespaces[ns] {
			continue // gone, or a namespace read already
		}
		mounts, err := readMounts(filepath.Join(pid, "mountinfo"), devices)
		if err != nil {
			continue // gone meanwhile
		}
		namespaces[ns] = true
		for _, m := range mounts {
			if !seen[m.Source] {
				seen[m.Source] = true
				paths = append(paths, filepath.Join(pid, "root", m.Mountpoint))
			}
		}
	}
	return paths, nil
}

// readMounts lists the mounts of devices in one mountinfo file.
func readMounts(path string, devices map[string]bool) ([]*mountinfo.Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return mountinfo.GetMountsFromReader(f, func(m *mountinfo.Info) (skip, stop bool) { return !devices[m.Source], false })
}
