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
//     names), /dev/null, and the volume at /data — read-write for a
//     receiver, read-only for a sender — mounted nosuid and nodev. A symlink
//     in the volume that points outside it resolves inside this root, where
//     there is nothing to write to;
//   - the capability bounding set cut to what `-aAHS` as root needs
//     (chown, dac_override, dac_read_search, fowner, fsetid, mknod; without
//     chown, fsetid and mknod when the transfer may not preserve ownership),
//     no_new_privs, and death with the agent.
//
// The confinement is set up by this executable itself, started again under
// the name "ferry-confine" (see package reexec), which then execs rsync.
package confine

import (
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
}

// DataDir is where the volume appears inside the confinement.
const DataDir = "/data"

// Command returns a command that runs rsync confined by spec; the caller sets
// its standard streams and starts it. Killing the command kills rsync.
func Command(spec Spec) (*exec.Cmd, error) {
	if err := spec.validate(); err != nil {
		return nil, err
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("encode confinement spec: %w", err)
	}
	cmd := &exec.Cmd{
		Path: reexec.Path(),
		Args: []string{helperName},
		Env:  []string{specEnv + "=" + string(raw)},
		SysProcAttr: &syscall.SysProcAttr{
			Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWNET | syscall.CLONE_NEWPID |
				syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS,
			Pdeathsig: syscall.SIGKILL,
		},
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
	s.Dir = strings.TrimPrefix(path.Clean("/"+s.Dir), "/")
	return nil
}
