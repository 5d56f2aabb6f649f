package driver

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// loops serializes this process's loop-device work. A test cluster runs
// every node's driver in one process over shared images (as nodes share a
// storage array), so one node's "which device backs this image, is it still
// in use, detach it" must not interleave with another node's "reuse that
// device and mount it": the second would mount a device the first is
// detaching, and read nothing but EIO.
var loops sync.Mutex

// loopDev is an attached loop device.
type loopDev struct {
	// Path is /dev/loopN.
	Path string
	// Clearing is set when the kernel detaches the device at its last
	// close: it was detached while something still held it open.
	Clearing bool
	// Revoked is set for a device cut down to nothing (revoke): its disk
	// is gone from the node, and it is never handed out again.
	Revoked bool
}

// devicesOf lists the loop devices backing img, from sysfs (what `losetup
// -j` reads too, without a process per question).
func devicesOf(img string) ([]loopDev, error) {
	if real, err := filepath.EvalSymlinks(img); err == nil {
		img = real // sysfs names the file by its resolved path
	}
	files, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		return nil, fmt.Errorf("list loop devices: %w", err)
	}
	var devs []loopDev
	for _, f := range files {
		backing, err := os.ReadFile(f)
		if err != nil || strings.TrimSpace(string(backing)) != img {
			continue // detached while we looked, or another image
		}
		dir := filepath.Dir(filepath.Dir(f))
		clear, _ := os.ReadFile(filepath.Join(dir, "loop", "autoclear"))
		size, _ := os.ReadFile(filepath.Join(dir, "size"))
		devs = append(devs, loopDev{Path: "/dev/" + filepath.Base(dir), Clearing: strings.TrimSpace(string(clear)) == "1",
			Revoked: strings.TrimSpace(string(size)) == revokedSectors})
	}
	return devs, nil
}

// attach returns a loop device for img that nothing is about to detach:
// one already attached (another node staged the same image: they share the
// filesystem, never two ext4 instances over one image), or a new one. A
// device the kernel is clearing is waited out first. The caller holds loops.
func attach(img string) (string, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		devs, err := devicesOf(img)
		if err != nil {
			return "", status.Errorf(codes.Internal, "%v", err)
		}
		clearing := false
		for _, d := range devs {
			switch {
			case d.Revoked:
			case !d.Clearing:
				return d.Path, nil
			default:
				clearing = true
			}
		}
		if !clearing {
			break
		}
		if time.Now().After(deadline) {
			return "", status.Errorf(codes.Unavailable, "%s is still held open through a detached loop device", img)
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).Output()
	if err != nil {
		return "", status.Errorf(codes.Internal, "attach %s to a loop device: %v", img, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// detachUnused detaches img's loop devices that no mount on this machine
// uses any more: neither a filesystem mounted from it nor a bind of the
// device node (a published block volume). The caller holds loops.
func detachUnused(img string) error {
	devs, err := devicesOf(img)
	if err != nil || len(devs) == 0 {
		return err
	}
	for _, d := range devs {
		used, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
			inUse := m.Source == d.Path || (m.FSType == "devtmpfs" && m.Root == "/"+filepath.Base(d.Path))
			return !inUse, inUse
		})
		if err != nil {
			return status.Errorf(codes.Internal, "read mounts: %v", err)
		}
		if len(used) > 0 || d.Clearing {
			continue
		}
		if err := run("losetup", "-d", d.Path); err != nil {
			return status.Errorf(codes.Internal, "detach %s: %v", d.Path, err)
		}
	}
	return nil
}

// revokedSectors is the size, in 512-byte sectors, of a revoked device.
const revokedSectors = "1"

// revoke cuts img's loop devices down to one sector, as a disk detached
// from its node disappears under whatever still has it mounted: every read
// or write past the first sector fails from then on, while the image keeps
// the data for the next attach, which gets a new device (attach never hands
// out a revoked one; detachUnused frees it once unused). The caller holds
// loops.
func revoke(img string) error {
	devs, err := devicesOf(img)
	if err != nil {
		return status.Errorf(codes.Internal, "%v", err)
	}
	for _, d := range devs {
		if err := shrink(d.Path); err != nil {
			return status.Errorf(codes.Internal, "revoke %s: %v", d.Path, err)
		}
	}
	return nil
}

func shrink(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if err != nil {
		return err
	}
	info.Sizelimit = 512
	if err := unix.IoctlLoopSetStatus64(int(f.Fd()), info); err != nil {
		return err
	}
	return unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_CAPACITY, 0)
}
