package cluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Teardown of real nodes: their processes (by cgroup), mount namespaces,
// cgroups and the loop devices their node plugins attached.

// CleanupRealNodes removes what the real nodes of a cluster whose process
// died left in dir: their processes (by cgroup), mount namespaces and
// cgroups. For the demo's --down.
func CleanupRealNodes(dir string) error {
	nodes, err := filepath.Glob(filepath.Join(dir, "nodes", "*", "root"))
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	loops, err := loopsUnder(dir)
	errs := []error{err}
	for _, root := range nodes {
		rn := newRealNode(dir, filepath.Base(filepath.Dir(root)))
		errs = append(errs, rn.killAll(), rn.dropMounts(), rn.removeCgroups())
	}
	return errors.Join(append(errs, detachLoops(loops))...)
}

// stopRealNodes kills everything in each node's cgroup subtree (kubelet,
// containerd, shims, containers), frozen first so nothing forks past the
// kill, then drops the mount namespace (and with it every mount made in it)
// and the cgroups.
func (c *Cluster) stopRealNodes() error {
	if len(c.real) == 0 {
		return nil
	}
	loops, err := c.LoopDevices()
	errs := []error{err}
	for _, rn := range c.real {
		errs = append(errs, rn.killAll(), rn.dropMounts(), rn.removeCgroups())
	}
	return errors.Join(append(errs, detachLoops(loops))...)
}

// LoopDevices lists the loop devices backed by this cluster's volume and
// snapshot images, as device → backing file identity (major:minor:inode).
// By identity, not path: a loop device names its backing file as the
// attaching process saw it, and a node plugin pod sees only its bind of the
// data directory.
func (c *Cluster) LoopDevices() (map[string]string, error) { return loopsUnder(c.Dir) }

func loopsUnder(dir string) (map[string]string, error) {
	images := map[string]bool{}
	err := filepath.WalkDir(filepath.Join(dir, "csi-data"), func(path string, d os.DirEntry, err error) error {
		if err != nil || !strings.HasSuffix(path, ".img") {
			return nil
		}
		var st unix.Stat_t
		if unix.Stat(path, &st) == nil {
			images[fmt.Sprintf("%d:%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: images: %w", err)
	}
	out, err := exec.Command("losetup", "--list", "--noheadings", "--output", "NAME,BACK-MAJ:MIN,BACK-INO").Output()
	if err != nil {
		return nil, fmt.Errorf("cluster: losetup: %w", err)
	}
	loops := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && images[f[1]+":"+f[2]] {
			loops[f[0]] = f[1] + ":" + f[2]
		}
	}
	return loops, nil
}

// detachLoops detaches the given loop devices: the node plugins attach
// volumes' images without autoclear and detach them when a volume is
// unstaged, which a killed node never does. A device whose filesystem a
// dying namespace still holds goes when that lets go.
func detachLoops(loops map[string]string) error {
	var errs []error
	for dev := range loops {
		if err := run("losetup", "-d", dev); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (rn *realNode) killAll() error {
	freezer := filepath.Join("/sys/fs/cgroup/freezer", rn.cgroup, "freezer.state")
	_ = os.WriteFile(freezer, []byte("FROZEN"), 0)
	defer func() { _ = os.WriteFile(freezer, []byte("THAWED"), 0) }()
	return waitFor(30*time.Second, func() bool {
		pids := rn.pids()
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if len(pids) > 0 {
			_ = os.WriteFile(freezer, []byte("THAWED"), 0) // the killed must run to die
		}
		return len(pids) == 0
	})
}

// pids lists the processes in the node's subtree.
func (rn *realNode) pids() []int {
	var pids []int
	_ = filepath.WalkDir(filepath.Join("/sys/fs/cgroup/pids", rn.cgroup), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.Name() != "cgroup.procs" {
			return nil
		}
		raw, _ := os.ReadFile(path)
		for _, f := range strings.Fields(string(raw)) {
			var pid int
			if _, err := fmt.Sscan(f, &pid); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

func (rn *realNode) dropMounts() error {
	var errs []error
	for _, m := range []string{rn.mntns, filepath.Dir(rn.mntns)} {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("cluster: unmount %s: %w", m, err))
		}
	}
	return errors.Join(errs...)
}

// removeCgroups removes the subtree, deepest first.
func (rn *realNode) removeCgroups() error {
	var errs []error
	for _, ctl := range cgroupControllers {
		root := filepath.Join("/sys/fs/cgroup", ctl, rn.cgroup)
		var dirs []string
		_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("cluster: remove cgroup: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}
