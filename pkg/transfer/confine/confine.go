// Package confine runs rsync so that it can reach nothing outside one volume.
//
// The agent is privileged on every node and the peer on the other end of an
// ssh connection is not trusted, so the rsync that serves a connection runs in
// a confinement of its own, whatever the peer sends:
//
//   - new mount, network, PID, IPC and UTS namespaces: no network at all, no
//     other processes to see or signal;
//   - a fresh tmpfs root, read-only, holding only /usr (and the /bin, /lib
//     links or read-only binds a merged or split /usr needs), an empty /etc
//     (so owners are kept by number, never mapped through the node's user
//     names), a read-only /dev/null (writes vanish, its inode cannot be
//     changed), what Binds name under /ferry (read-only), and the volume at
//     /data — read-write for a receiver, read-only for a sender — mounted
//     nosuid and nodev. A symlink in the volume that points outside it
//     resolves inside this root, where there is nothing to write to;
//   - a privileged receiver keeps only the capabilities `-aAHS` as root
//     needs (chown, dac_override, fowner, fsetid, mknod); a sender only
//     dac_override, to read every file; an unprivileged receiver runs as an
//     ordinary user (RunAs) with none. Never dac_read_search: it allows
//     open_by_handle_at, which reaches the whole filesystem behind a bind
//     mount;
//   - no_new_privs and a seccomp filter refusing what rsync never needs
//     (mounts, namespaces, file handles, ptrace, bpf, keyrings, modules),
//     and every call made through another architecture's convention (int
//     0x80, x32), whose numbers a 64-bit deny-list does not hold;
//   - the cgroups the caller names (memory and pids limits), joined before
//     rsync starts, and death with the agent.
//
// The confinement is set up by this executable itself, started again under
// the name "ferry-confine" (see package reexec), which then execs rsync.
package confine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/ferrysync/ferry/pkg/transfer/reexec"
)

// helperName is the name this package's helper runs under.
const helperName = "ferry-confine"

// specEnv carries the Spec to the helper. It holds no secrets.
const specEnv = "FERRY_CONFINE_SPEC"

func init() { reexec.Register(helperName, helperMain) }

// Spec says what to run and what it may touch.
type Spec struct {
	// Volume is the host path of the volume's root, shown at /data.
	Volume string `json:"volume"`
	// Dir is the directory within the volume that rsync starts in; it is
	// resolved inside the confinement, so a symlink cannot lead out. A
	// writable confinement creates it when missing.
	Dir string `json:"dir"`
	// ReadOnly shows the volume read-only (a sender).
	ReadOnly bool `json:"readOnly"`
	// Privileged keeps the capabilities that preserve ownership, setuid bits
	// and device nodes.
	Privileged bool `json:"privileged"`
	// Scratch is an empty host directory that the new root is mounted over,
	// inside the confinement's own mount namespace only. It must not be the
	// volume or inside it.
	Scratch string `json:"scratch"`
	// Rsync is the rsync binary; it must live under /usr.
	Rsync string `json:"rsync"`
	// Args are rsync's arguments.
	Args []string `json:"args"`
	// Binds are host files or directories shown read-only inside (the
	// remote-shell helper a sender runs and its socket). Rsync may name a
	// bound file; it then runs from its path inside.
	Binds []Bind `json:"binds,omitempty"`
	// RunAs makes rsync run as this ordinary user, without capabilities. A
	// volume root owned by root (as a provisioner leaves it) is given to
	// the user first. Required for a writable confinement that is not
	// privileged.
	RunAs *Identity `json:"runAs,omitempty"`
	// Cgroups are cgroup directories (one per hierarchy) that the
	// confinement joins before rsync starts.
	Cgroups []string `json:"cgroups,omitempty"`
}

// Bind shows the host path Host at Path, which must lie under BindDir.
type Bind struct {
	Host string `json:"host"`
	Path string `json:"path"`
}

// BindDir is where binds appear inside the confinement.
const BindDir = "/ferry"

// Identity is a numeric user and group.
type Identity struct {
	UID int64 `json:"uid"`
	GID int64 `json:"gid"`
}

// DataDir is where the volume appears inside the confinement.
const DataDir = "/data"

// Command returns a command that runs rsync confined by spec; the caller sets
// its standard streams and starts it. Ending ctx or killing the command
// kills rsync.
func Command(ctx context.Context, spec Spec) (*exec.Cmd, error) {
	if err := spec.validate(); err != nil {
		return nil, err
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("encode confinement spec: %w", err)
	}
	cmd := exec.CommandContext(ctx, reexec.Path())
	cmd.Args = []string{helperName}
	cmd.Env = []string{specEnv + "=" + string(raw)}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWNET | syscall.CLONE_NEWPID |
			syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS,
		Pdeathsig: syscall.SIGKILL,
	}
	return cmd, nil
}

func (s *Spec) validate() error {
	if !filepath.IsAbs(s.Volume) || !filepath.IsAbs(s.Scratch) {
		return errors.New("confine: volume and scratch must be absolute paths")
	}
	if rel, err := filepath.Rel(s.Volume, s.Scratch); err == nil && !strings.HasPrefix(rel, "..") {
		return errors.New("confine: scratch must not be inside the volume")
	}
	for _, part := range strings.Split(s.Dir, "/") {
		if part == ".." {
			return fmt.Errorf("confine: dir %q must not contain a .. element", s.Dir)
		}
	}
	if !s.ReadOnly && !s.Privileged && s.RunAs == nil {
		return errors.New("confine: an unprivileged writable confinement needs a user to run as")
	}
	if s.RunAs != nil && (s.RunAs.UID <= 0 || s.RunAs.GID < 0) {
		return fmt.Errorf("confine: run as uid %d gid %d: want an ordinary user (uid above 0)", s.RunAs.UID, s.RunAs.GID)
	}
	for _, b := range s.Binds {
		if !filepath.IsAbs(b.Host) || path.Clean(b.Path) != b.Path || !strings.HasPrefix(b.Path, BindDir+"/") {
			return fmt.Errorf("confine: bind %s at %s: want an absolute host path shown under %s", b.Host, b.Path, BindDir)
		}
	}
	s.Dir = strings.TrimPrefix(path.Clean("/"+s.Dir), "/")
	if s.bound() != "" {
		return nil
	}
	if s.Rsync == "" {
		p, err := exec.LookPath("rsync")
		if err != nil {
			return fmt.Errorf("confine: find rsync: %w", err)
		}
		s.Rsync = p
	}
	real, err := filepath.EvalSymlinks(s.Rsync)
	if err != nil {
		return fmt.Errorf("confine: rsync binary: %w", err)
	}
	if !strings.HasPrefix(real, "/usr/") {
		return fmt.Errorf("confine: rsync binary %s must live under /usr: the confinement shows no other system tree", real)
	}
	s.Rsync = real
	return nil
}

// bound is the path inside where Rsync is bound, if it is.
func (s *Spec) bound() string {
	for _, b := range s.Binds {
		if s.Rsync != "" && b.Host == s.Rsync {
			return b.Path
		}
	}
	return ""
}
