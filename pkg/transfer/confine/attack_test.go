package confine_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/elastic/go-seccomp-bpf/arch"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/internal/testenv/compat32"
	"github.com/ferrysync/ferry/pkg/transfer/cgroup"
	"github.com/ferrysync/ferry/pkg/transfer/confine"
	"github.com/ferrysync/ferry/pkg/transfer/reexec"
)

const (
	probeName = "confine-probe"
	// compat32Probe makes one 32-bit call outside any confinement: it dies
	// of SIGSEGV where the kernel has no 32-bit emulation.
	compat32Probe = "compat32-probe"
	// tryCompat32 asks the probe to make 32-bit calls too.
	tryCompat32 = "compat32"
)

func init() {
	reexec.Register(probeName, probeMain)
	reexec.Register(compat32Probe, func() {
		compat32.Syscall(uintptr(arch.I386.SyscallNames["getpid"]), 0, 0, 0)
		os.Exit(0)
	})
}

// probeReport is what the probe, run in rsync's place, managed to do.
type probeReport struct {
	UID, GID   int
	Effective  uint64 // capabilities
	Attempts   map[string]string
	DevNullOut string // writing to /dev/null, which rsync may do
}

// probeMain tries, from inside the confinement, what an attacker who took
// over rsync (through a bug reachable over the wire) would try, and
// reports each outcome ("ok" or the errno's name) on stdout.
func probeMain() {
	if len(os.Args) > 1 && os.Args[1] != tryCompat32 {
		probeLimits(os.Args[1])
	}
	r := probeReport{UID: os.Getuid(), GID: os.Getgid(), Attempts: map[string]string{}}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var caps [2]unix.CapUserData
	if err := unix.Capget(&hdr, &caps[0]); err == nil {
		r.Effective = uint64(caps[0].Effective) | uint64(caps[1].Effective)<<32
	}
	try := func(name string, err error) {
		var errno unix.Errno
		switch {
		case err == nil:
			r.Attempts[name] = "ok"
		case errors.As(err, &errno):
			r.Attempts[name] = unix.ErrnoName(errno)
		default:
			r.Attempts[name] = err.Error()
		}
	}
	// The "shocker" escape: a file handle for the root directory of the
	// filesystem behind the bind mount, opened through any descriptor on
	// it. ext4 and xfs give the root inode number 2 (generation 0).
	if mnt, err := unix.Open(confine.DataDir, unix.O_RDONLY|unix.O_DIRECTORY, 0); err == nil {
		h := unix.NewFileHandle(1, []byte{2, 0, 0, 0, 0, 0, 0, 0})
		fd, err := unix.OpenByHandleAt(mnt, h, unix.O_RDONLY)
		try("open_by_handle_at", err)
		if err == nil {
			unix.Close(fd)
		}
		_, _, err = unix.NameToHandleAt(unix.AT_FDCWD, confine.DataDir, 0)
		try("name_to_handle_at", err)
	}
	try("chmod /dev/null", unix.Chmod("/dev/null", 0o777))
	try("chown /dev/null", unix.Chown("/dev/null", 4242, 4242))
	try("unlink /dev/null", unix.Unlink("/dev/null"))
	try("mknod /dev/x", unix.Mknod("/dev/x", unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	try("mount tmpfs", unix.Mount("x", "/dev", "tmpfs", 0, ""))
	try("unshare user namespace", unix.Unshare(unix.CLONE_NEWUSER))
	try("write /etc", os.WriteFile("/etc/x", nil, 0o644))
	_, _, errno := unix.RawSyscall(unix.SYS_PTRACE, unix.PTRACE_TRACEME, 0, 0)
	if errno == 0 {
		try("ptrace", nil)
	} else {
		try("ptrace", errno)
	}
	try("write volume", os.WriteFile(filepath.Join(confine.DataDir, "probe"), []byte("x"), 0o644))
	if len(os.Args) > 1 && os.Args[1] == tryCompat32 {
		// The same calls through int 0x80, whose numbers the 64-bit
		// deny-list does not hold.
		for name, call := range map[string][2]uintptr{
			"i386 getpid":                 {uintptr(arch.I386.SyscallNames["getpid"]), 0},
			"i386 unshare user namespace": {uintptr(arch.I386.SyscallNames["unshare"]), unix.CLONE_NEWUSER},
		} {
			if r := compat32.Syscall(call[0], call[1], 0, 0); r < 0 {
				try(name, unix.Errno(-r))
			} else {
				try(name, nil)
			}
		}
	}
	if f, err := os.OpenFile("/dev/null", os.O_WRONLY, 0); err == nil {
		_, err = f.Write([]byte("x"))
		r.DevNullOut = fmt.Sprint(err)
		f.Close()
	} else {
		r.DevNullOut = err.Error()
	}
	_ = json.NewEncoder(os.Stdout).Encode(r)
	os.Exit(0)
}

// probeLimits runs into a transfer's cgroup limits: "alloc" touches 256 MiB,
// "spawn" starts up to 64 processes; each prints how far it got.
func probeLimits(mode string) {
	switch mode {
	case "alloc":
		mem := make([]byte, 256<<20)
		for i := 0; i < len(mem); i += 4096 {
			mem[i] = 1
		}
		fmt.Println("allocated", len(mem))
	case "spawn":
		started := 0
		for ; started < 64; started++ {
			cmd := exec.Command("/usr/bin/sleep", "30")
			if err := cmd.Start(); err != nil {
				fmt.Println("start:", err)
				break
			}
			defer func() { _ = cmd.Process.Kill() }()
		}
		fmt.Println("started", started)
	}
	os.Exit(0)
}

// hasCompat32 says whether this machine runs 32-bit x86 calls at all
// (amd64 with the kernel's 32-bit emulation), trying one in a child.
func hasCompat32(t *testing.T) bool {
	t.Helper()
	if !compat32.Supported {
		return false
	}
	self, err := os.Executable()
	require.NoError(t, err)
	return exec.Command(self, compat32Probe).Run() == nil
}

// probe runs the probe confined by spec and returns its report; with
// compat it also makes 32-bit calls.
func probe(t *testing.T, spec confine.Spec, compat bool) probeReport {
	t.Helper()
	self, err := os.Executable()
	require.NoError(t, err)
	spec.Rsync = self
	spec.Binds = append(spec.Binds, confine.Bind{Host: self, Path: confine.BindDir + "/probe"})
	spec.Args = []string{probeName}
	if compat {
		spec.Args = append(spec.Args, tryCompat32)
	}
	out, err := run(t, spec)
	require.NoError(t, err)
	var r probeReport
	require.NoError(t, json.Unmarshal([]byte(out), &r), out)
	return r
}

// TestAttackerInRsyncsPlace: a program that has taken over rsync inside the
// confinement cannot reach past the volume's bind mount with a file handle,
// change the host's /dev/null, mount, make namespaces or trace, in any of
// the three shapes the confinement takes, whether it calls the 64-bit way
// or through the 32-bit convention; and holds only the capabilities its
// role needs.
func TestAttackerInRsyncsPlace(t *testing.T) {
	testenv.NeedRoot(t)
	compat := hasCompat32(t)
	if !compat {
		t.Log("this machine runs no 32-bit x86 calls (not amd64, or no 32-bit emulation in the kernel): " +
			"the 32-bit attempts are left out; TestFilterRefusesBothConventions checks the filter for them")
	}
	var before unix.Stat_t
	require.NoError(t, unix.Stat("/dev/null", &before))
	const dacOverride, dacReadSearch = 1 << unix.CAP_DAC_OVERRIDE, 1 << unix.CAP_DAC_READ_SEARCH
	for name, tc := range map[string]struct {
		spec      confine.Spec
		uid       int
		caps      uint64
		volumeErr string
	}{
		"privileged receiver": {spec: confine.Spec{Privileged: true}, caps: 1<<unix.CAP_CHOWN | dacOverride |
			1<<unix.CAP_FOWNER | 1<<unix.CAP_FSETID | 1<<unix.CAP_MKNOD, volumeErr: "ok"},
		"sender":                {spec: confine.Spec{ReadOnly: true}, caps: dacOverride, volumeErr: "EROFS"},
		"unprivileged receiver": {spec: confine.Spec{RunAs: &confine.Identity{UID: 4000, GID: 4000}}, uid: 4000, volumeErr: "ok"},
	} {
		t.Run(name, func(t *testing.T) {
			tc.spec.Volume = volume(t)
			r := probe(t, tc.spec, compat)
			assert.Equal(t, tc.uid, r.UID)
			assert.Equal(t, tc.caps, r.Effective, "capabilities held")
			assert.Zero(t, r.Effective&dacReadSearch, "never CAP_DAC_READ_SEARCH")
			for _, attempt := range []string{"open_by_handle_at", "name_to_handle_at", "mount tmpfs",
				"unshare user namespace", "ptrace"} {
				assert.Equal(t, "EPERM", r.Attempts[attempt], attempt)
			}
			if compat {
				assert.Equal(t, "EPERM", r.Attempts["i386 unshare user namespace"])
				assert.Equal(t, "EPERM", r.Attempts["i386 getpid"], "no 32-bit call passes at all")
			}
			for _, attempt := range []string{"chmod /dev/null", "chown /dev/null", "unlink /dev/null", "mknod /dev/x", "write /etc"} {
				assert.Contains(t, []string{"EROFS", "EPERM", "EACCES"}, r.Attempts[attempt], attempt)
			}
			assert.Equal(t, tc.volumeErr, r.Attempts["write volume"])
			assert.Equal(t, "<nil>", r.DevNullOut, "rsync can still write to /dev/null")
		})
	}
	var after unix.Stat_t
	require.NoError(t, unix.Stat("/dev/null", &after))
	assert.Equal(t, before.Mode, after.Mode, "host /dev/null mode")
	assert.Equal(t, before.Uid, after.Uid, "host /dev/null owner")
	assert.Equal(t, before.Rdev, after.Rdev, "host /dev/null device")
}

// TestUnprivilegedReceiverOwnsTheVolumeRoot: a root-owned volume root, as
// a provisioner leaves it, is given to the receiver's user, and what rsync
// writes is that user's.
func TestUnprivilegedReceiverOwnsTheVolumeRoot(t *testing.T) {
	testenv.NeedRoot(t)
	vol := volume(t)
	require.NoError(t, os.Chmod(filepath.Join(vol, "src"), 0o777))
	_, err := run(t, confine.Spec{Volume: vol, RunAs: &confine.Identity{UID: 4000, GID: 4001},
		Args: []string{"-rt", "src/", "copy/"}})
	require.NoError(t, err)
	for _, p := range []string{vol, filepath.Join(vol, "copy"), filepath.Join(vol, "copy", "f")} {
		var st unix.Stat_t
		require.NoError(t, unix.Lstat(p, &st))
		assert.Equal(t, uint32(4000), st.Uid, p)
		assert.Equal(t, uint32(4001), st.Gid, p)
	}
}

// TestTransferLimits: a transfer that allocates past its memory limit is
// killed (and its group says so), and one that spawns processes is stopped
// at its pids limit; the agent that started them is untouched.
func TestTransferLimits(t *testing.T) {
	testenv.NeedRoot(t)
	pool, err := cgroup.New("ferry-test-"+strconv.Itoa(os.Getpid()), cgroup.Limits{MemoryBytes: 64 << 20, Pids: 16})
	require.NoError(t, err)
	t.Cleanup(pool.Remove)
	self, err := os.Executable()
	require.NoError(t, err)
	confined := func(mode string) (*cgroup.Group, string, error) {
		g, err := pool.Make("probe", cgroup.Limits{})
		require.NoError(t, err)
		t.Cleanup(g.Remove)
		out, err := run(t, confine.Spec{Volume: volume(t), ReadOnly: true, Cgroups: g.Dirs(), Rsync: self,
			Binds: []confine.Bind{{Host: self, Path: confine.BindDir + "/probe"}}, Args: []string{probeName, mode}})
		return g, out, err
	}
	g, out, err := confined("alloc")
	assert.Error(t, err, "killed past 64 MiB")
	assert.NotContains(t, out, "allocated")
	assert.True(t, g.OOMKilled(), "the group records the kill")

	g, err = pool.Make("cpu", cgroup.Limits{CPUMillis: 250})
	require.NoError(t, err)
	t.Cleanup(g.Remove)
	var quota string
	for _, d := range g.Dirs() {
		for _, f := range []string{"cpu.cfs_quota_us", "cpu.max"} {
			if raw, err := os.ReadFile(filepath.Join(d, f)); err == nil {
				quota = strings.TrimSpace(string(raw))
			}
		}
	}
	assert.Contains(t, []string{"25000", "25000 100000"}, quota, "a quarter of a CPU")

	g, out, err = confined("spawn")
	require.NoError(t, err)
	assert.Contains(t, out, "start:", "a process start failed at the limit")
	assert.False(t, g.OOMKilled())
	n, err := strconv.Atoi(strings.TrimSpace(out[strings.LastIndex(out, "started ")+len("started "):]))
	require.NoError(t, err, out)
	assert.Less(t, n, 16, "processes started under a pids limit of 16")
}

// TestUnprivilegedReceiverTakesOverAForeignTree: a volume another writer
// left (VolSync's mover ran as root and kept the source's owners: a
// root-only directory, a setuid root file, a file of uid 1234, and a
// symlink to a host file) is given whole to the receiver's user, who then
// replaces and deletes there; the setuid bit is gone, and the host file
// the link names keeps its owner.
func TestUnprivilegedReceiverTakesOverAForeignTree(t *testing.T) {
	testenv.NeedRoot(t)
	vol := volume(t)
	host := filepath.Join(t.TempDir(), "host-file")
	require.NoError(t, os.WriteFile(host, []byte("host"), 0o600))
	dst := filepath.Join(vol, "dst")
	require.NoError(t, os.MkdirAll(filepath.Join(dst, "private"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dst, "private", "old"), []byte("old"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dst, "f"), []byte("stale"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dst, "suid"), []byte("x"), 0o755))
	require.NoError(t, os.Chmod(filepath.Join(dst, "suid"), 0o4755))
	require.NoError(t, os.WriteFile(filepath.Join(dst, "theirs"), []byte("t"), 0o644))
	require.NoError(t, os.Lchown(filepath.Join(dst, "theirs"), 1234, 1234))
	require.NoError(t, os.Symlink(host, filepath.Join(dst, "link")))
	require.NoError(t, os.Chmod(dst, 0o755))

	id := &confine.Identity{UID: 4000, GID: 4001}
	_, err := run(t, confine.Spec{Volume: vol, RunAs: id, Args: []string{"-rt", "--delete", "src/", "dst/"}})
	require.NoError(t, err)

	got, err := os.ReadFile(filepath.Join(dst, "f"))
	require.NoError(t, err)
	assert.Equal(t, "data", string(got), "a file of root's replaced")
	_, err = os.Lstat(filepath.Join(dst, "private"))
	assert.True(t, os.IsNotExist(err), "a root-only directory deleted")
	require.NoError(t, filepath.WalkDir(vol, func(p string, _ fs.DirEntry, err error) error {
		require.NoError(t, err)
		var st unix.Stat_t
		require.NoError(t, unix.Lstat(p, &st))
		assert.Equal(t, [2]uint32{4000, 4001}, [2]uint32{st.Uid, st.Gid}, p)
		assert.Zero(t, st.Mode&(unix.S_ISUID|unix.S_ISGID), p)
		return nil
	}))
	var st unix.Stat_t
	require.NoError(t, unix.Stat(host, &st))
	assert.Equal(t, [2]uint32{0, 0}, [2]uint32{st.Uid, st.Gid}, "the host file a link named")
}
