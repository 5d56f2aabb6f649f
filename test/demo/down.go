package demo

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/ferrysync/ferry/test/cluster"
)

// stateFile lists the directories a running demo made (its clusters', its
// build's), so that Down finds them and nothing else.
var stateFile = filepath.Join(os.TempDir(), "ferry-demo.state")

// remember adds a directory to the state file.
func remember(dir string) error {
	f, err := os.OpenFile(stateFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("record %s: %w", dir, err)
	}
	_, err = fmt.Fprintln(f, dir)
	return errors.Join(err, f.Close())
}

// Down removes what a demo killed before its teardown left: its real
// nodes' processes, mount namespaces and cgroups, its processes (started
// from its build directory or with its clusters' files), mounts and
// loop devices under its clusters' directories, its network namespaces and
// bridge, and those directories.
func Down() error {
	raw, err := os.ReadFile(stateFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil // nothing left behind
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", stateFile, err)
	}
	var dirs, bins []string
	for _, l := range strings.Fields(string(raw)) {
		if strings.Contains(filepath.Base(l), "ferry-bin-") {
			bins = append(bins, l)
		} else {
			dirs = append(dirs, l)
		}
	}
	var errs []error
	for _, d := range dirs {
		errs = append(errs, cluster.CleanupRealNodes(d))
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		raw, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		cmd := string(raw)
		for _, d := range append(append([]string{}, dirs...), bins...) {
			if strings.Contains(cmd, d) {
				var pid int
				if _, err := fmt.Sscanf(p, "/proc/%d/cmdline", &pid); err == nil && pid != os.Getpid() {
					_ = unix.Kill(pid, unix.SIGKILL)
				}
				break
			}
		}
	}
	for _, d := range dirs {
		mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(d))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].Mountpoint) > len(mounts[j].Mountpoint) })
		for _, m := range mounts {
			if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil {
				errs = append(errs, fmt.Errorf("unmount %s: %w", m.Mountpoint, err))
			}
		}
		out, _ := exec.Command("losetup", "-a").Output()
		for _, l := range strings.Split(string(out), "\n") {
			if dev, _, ok := strings.Cut(l, ":"); ok && strings.Contains(l, d) {
				if err := exec.Command("losetup", "-d", dev).Run(); err != nil {
					errs = append(errs, fmt.Errorf("detach %s: %w", dev, err))
				}
			}
		}
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, l := range strings.Split(string(out), "\n") {
		if name := strings.Fields(l); len(name) > 0 && strings.HasPrefix(name[0], networkName+"-") {
			if err := exec.Command("ip", "netns", "del", name[0]).Run(); err != nil {
				errs = append(errs, fmt.Errorf("delete netns %s: %w", name[0], err))
			}
		}
	}
	_ = exec.Command("ip", "link", "del", "fbr-"+networkName).Run()
	for _, d := range append(dirs, bins...) {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		errs = append(errs, os.Remove(stateFile))
	}
	return errors.Join(errs...)
}
