package confine

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// keepPrivileged are the capabilities rsync -aAHS needs as root to preserve
// ownership, modes (setuid included), ACLs and device nodes. Not
// CAP_DAC_READ_SEARCH: dac_override covers reading and searching, and
// dac_read_search alone allows open_by_handle_at.
var keepPrivileged = []uintptr{unix.CAP_CHOWN, unix.CAP_DAC_OVERRIDE,
	unix.CAP_FOWNER, unix.CAP_FSETID, unix.CAP_MKNOD}

// keepSender lets a sender read every file of the volume, and do nothing
// else a root process could.
var keepSender = []uintptr{unix.CAP_DAC_OVERRIDE}

// systemDirs are shown read-only (or as the same symlink) in the new root so
// that rsync and its libraries load.
var systemDirs = []string{"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"}

// helperMain runs in the re-executed child, already in its new namespaces.
func helperMain() {
	runtime.LockOSThread() // capabilities are per thread: drop and exec on this one
	var spec Spec
	if err := json.Unmarshal([]byte(os.Getenv(specEnv)), &spec); err != nil {
		fail(fmt.Errorf("read spec: %w", err))
	}
	if err := enter(&spec); err != nil {
		fail(err)
	}
	argv := append([]string{"rsync"}, spec.Args...)
	env := []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	exe := spec.Rsync
	if b := spec.bound(); b != "" {
		exe = b
	}
	fail(unix.Exec(exe, argv, env))
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "ferry: confine: %v\n", err)
	os.Exit(126)
}

// enter builds the new root, moves into it and drops privileges.
func enter(spec *Spec) error {
	last, err := lastCap() // before /proc is out of sight
	if err != nil {
		return err
	}
	// Hold the volume before anything is mounted over paths, so it is found
	// even if it lies under the scratch directory's parent.
	vol, err := unix.Open(spec.Volume, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open volume: %w", err)
	}
	for _, cg := range spec.Cgroups {
		// "0": the writer itself (PID namespaces make our own number 1).
		if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte("0"), 0); err != nil {
			return fmt.Errorf("join cgroup: %w", err)
		}
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	root := spec.Scratch
	if err := unix.Mount("ferry-confine", root, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=1m"); err != nil {
		return fmt.Errorf("mount root tmpfs: %w", err)
	}
	for _, d := range systemDirs {
		if err := showSystemDir(root, d); err != nil {
			return err
		}
	}
	if err := showDevNull(root); err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(root, "etc"), 0o755); err != nil {
		return fmt.Errorf("make /etc: %w", err)
	}
	for _, b := range spec.Binds {
		if err := showBind(root, b); err != nil {
			return err
		}
	}
	data := filepath.Join(root, DataDir)
	if err := os.Mkdir(data, 0o755); err != nil {
		return fmt.Errorf("make %s: %w", DataDir, err)
	}
	if err := unix.Mount("/proc/self/fd/"+strconv.Itoa(vol), data, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind volume: %w", err)
	}
	unix.Close(vol)
	flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_NOSUID | unix.MS_NODEV)
	if spec.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount("", data, "", flags, ""); err != nil {
		return fmt.Errorf("restrict volume mount: %w", err)
	}
	if err := pivot(root); err != nil {
		return err
	}
	if spec.RunAs != nil {
		if err := giveVolume(spec.RunAs); err != nil {
			return err
		}
	}
	if err := dropPrivileges(spec, last); err != nil {
		return err
	}
	if err := enterDir(spec); err != nil {
		return err
	}
	return loadSeccomp()
}

// giveVolume hands the volume to the ordinary user an unprivileged receiver
// runs as, so that rsync can write, replace and delete there. A root the
// user owns was written by Ferry's receivers before (they cannot give it
// away): only the root's lost+found, as mkfs leaves it (root's, 0700),
// which a source on the same kind of filesystem sends, may need handing
// over. Any other root was made by someone else: a provisioner (root's,
// empty), VolSync's mover before Ferry took over, or a receiver that ran
// as another user (moverSecurityContext changed). Then every entry is
// given to the user. This runs inside the confinement, where nothing but
// the volume exists, and lchown changes a link, never what it names; the
// kernel clears setuid and setgid bits of what it gives away.
func giveVolume(id *Identity) error {
	var st unix.Stat_t
	if err := unix.Lstat(DataDir, &st); err != nil {
		return fmt.Errorf("inspect %s: %w", DataDir, err)
	}
	if int64(st.Uid) != id.UID || int64(st.Gid) != id.GID {
		return filepath.WalkDir(DataDir, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return fmt.Errorf("give the volume to uid %d: %w", id.UID, err)
			}
			return give(path, id)
		})
	}
	if err := give(DataDir+"/lost+found", id); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}

// give makes path id's, and a directory open to its owner.
func give(path string, id *Identity) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fmt.Errorf("inspect %s: %w", path, err)
	}
	if int64(st.Uid) != id.UID || int64(st.Gid) != id.GID {
		if err := unix.Lchown(path, int(id.UID), int(id.GID)); err != nil {
			return fmt.Errorf("give %s to uid %d: %w", path, id.UID, err)
		}
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Mode&0o700 != 0o700 {
		if err := unix.Chmod(path, st.Mode&0o7777|0o700); err != nil {
			return fmt.Errorf("open %s to its owner: %w", path, err)
		}
	}
	return nil
}

// showBind shows a host file or directory read-only at its path under
// BindDir.
func showBind(root string, b Bind) error {
	fi, err := os.Stat(b.Host)
	if err != nil {
		return fmt.Errorf("inspect %s: %w", b.Host, err)
	}
	target := filepath.Join(root, b.Path)
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return fmt.Errorf("make %s: %w", filepath.Dir(b.Path), err)
	}
	if fi.IsDir() {
		err = os.Mkdir(target, 0o755)
	} else {
		err = os.WriteFile(target, nil, 0o755)
	}
	if err != nil {
		return fmt.Errorf("make %s: %w", b.Path, err)
	}
	return bindReadOnly(b.Host, target, 0)
}

// showSystemDir recreates /name in root: the same symlink, or a read-only
// bind of the directory.
func showSystemDir(root, name string) error {
	host := "/" + name
	fi, err := os.Lstat(host)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("inspect %s: %w", host, err)
	}
	target := filepath.Join(root, name)
	if fi.Mode()&os.ModeSymlink != 0 {
		link, err := os.Readlink(host)
		if err != nil {
			return fmt.Errorf("read link %s: %w", host, err)
		}
		if err := os.Symlink(link, target); err != nil {
			return fmt.Errorf("link %s: %w", host, err)
		}
		return nil
	}
	if err := os.Mkdir(target, 0o755); err != nil {
		return fmt.Errorf("make %s: %w", target, err)
	}
	return bindReadOnly(host, target, unix.MS_NODEV)
}

// bindReadOnly binds src at dst, read-only, nosuid and with extra flags.
func bindReadOnly(src, dst string, flags uintptr) error {
	if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|flags, ""); err != nil {
		return fmt.Errorf("make %s read-only: %w", src, err)
	}
	return nil
}

func showDevNull(root string) error {
	dev := filepath.Join(root, "dev")
	if err := os.Mkdir(dev, 0o755); err != nil {
		return fmt.Errorf("make /dev: %w", err)
	}
	null := filepath.Join(dev, "null")
	if err := os.WriteFile(null, nil, 0o666); err != nil {
		return fmt.Errorf("make /dev/null: %w", err)
	}
	// Read-only: writes to the device still vanish, but its inode on the
	// host's devtmpfs cannot be chmod'ed, chown'ed or replaced.
	return bindReadOnly("/dev/null", null, unix.MS_NOEXEC)
}

// pivot makes root the new / and detaches the host's tree from this
// namespace, then makes / read-only.
func pivot(root string) error {
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("enter new root: %w", err)
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach host root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return fmt.Errorf("make root read-only: %w", err)
	}
	return nil
}

// enterDir changes into the start directory. Path resolution happens inside
// the new root, so symlinks in the volume cannot lead out of it.
func enterDir(spec *Spec) error {
	dir := filepath.Join(DataDir, spec.Dir)
	if !spec.ReadOnly {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("make %s in the volume: %w", spec.Dir, err)
		}
	}
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("enter %s in the volume: %w", spec.Dir, err)
	}
	return nil
}

// dropPrivileges cuts the bounding, inheritable and ambient capability sets
// to what rsync needs, so that after exec rsync holds only those, and
// becomes the ordinary user the spec names, if any, which leaves it none.
func dropPrivileges(spec *Spec, last uintptr) error {
	var keep []uintptr
	switch {
	case spec.RunAs != nil:
	case spec.ReadOnly:
		keep = keepSender
	case spec.Privileged:
		keep = keepPrivileged
	}
	kept := map[uintptr]bool{}
	for _, c := range keep {
		kept[c] = true
	}
	for c := uintptr(0); c <= last; c++ {
		if kept[c] {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, c, 0, 0, 0); err != nil {
			return fmt.Errorf("drop capability %d: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	data[0].Inheritable, data[1].Inheritable = 0, 0
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("clear inheritable capabilities: %w", err)
	}
	if id := spec.RunAs; id != nil {
		// This thread execs rsync, so its ids are the ones that count.
		if err := unix.Setgroups([]int{int(id.GID)}); err != nil {
			return fmt.Errorf("set groups: %w", err)
		}
		if err := unix.Setresgid(int(id.GID), int(id.GID), int(id.GID)); err != nil {
			return fmt.Errorf("set gid %d: %w", id.GID, err)
		}
		if err := unix.Setresuid(int(id.UID), int(id.UID), int(id.UID)); err != nil {
			return fmt.Errorf("set uid %d: %w", id.UID, err)
		}
	}
	return nil
}

func lastCap() (uintptr, error) {
	raw, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("read cap_last_cap: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		return 0, fmt.Errorf("parse cap_last_cap: %w", err)
	}
	return uintptr(n), nil
}
