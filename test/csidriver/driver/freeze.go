package driver

import (
	"errors"
	"fmt"
	"os"

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
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) { return !devices[m.Source], false })
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	// One mount per filesystem: binds and publishes share the superblock.
	seen := map[string]bool{}
	for _, m := range mounts {
		if seen[m.Source] {
			continue
		}
		f, err := os.Open(m.Mountpoint)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("open %s: %w", m.Mountpoint, err), thaw())
		}
		if err := unix.IoctlSetInt(int(f.Fd()), fiFreeze, 0); err != nil {
			f.Close()
			return nil, errors.Join(fmt.Errorf("freeze %s: %w", m.Mountpoint, err), thaw())
		}
		seen[m.Source] = true
		frozen = append(frozen, f)
	}
	return thaw, nil
}
