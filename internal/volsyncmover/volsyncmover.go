// Package volsyncmover plays VolSync's rsync mover with the stock tools its
// container runs, so that interop tests check Ferry against what VolSync
// really does rather than against Ferry's idea of it:
//
//   - the source as VolSync's source script runs it: OpenSSH with the
//     destination's host key pinned in known_hosts, the Secret's identity,
//     ControlMaster connection sharing; `rsync -aAhHSxz --delete
//     --itemize-changes --info=stats2,misc2 DIR/ root@ADDRESS:.`; then
//     `ssh root@ADDRESS shutdown N`;
//   - the destination as VolSync's destination script sets up sshd: the host
//     key from the Secret, the source's key forced (with restrict) to a
//     command that runs rrsync on the volume for rsync and records
//     `shutdown N`.
//
// It serves tests only; errors are returned, never fatal, so a test or a
// program that plays one can use it.
package volsyncmover

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Source is a stock OpenSSH + rsync client set up like VolSync's source.
type Source struct {
	dir, identity, knownHosts string
	host                      string
	port                      int
	// Prefix runs the tools through another command (such as `ip netns
	// exec NODE`), to send from where the source would run.
	Prefix []string
}

// NewSource writes the source's identity (the Secret's "source") and a
// known_hosts pinning host:port to its "destination.pub" under dir, which
// must be short: the ControlMaster socket lives there.
func NewSource(dir string, secret map[string][]byte, host string, port int) (*Source, error) {
	s := &Source{dir: dir, identity: filepath.Join(dir, "source"), knownHosts: filepath.Join(dir, "known_hosts"), host: host, port: port}
	if err := os.WriteFile(s.identity, secret["source"], 0o600); err != nil {
		return nil, fmt.Errorf("write identity: %w", err)
	}
	known := host
	if port != 22 {
		known = fmt.Sprintf("[%s]:%d", host, port)
	}
	if err := os.WriteFile(s.knownHosts, []byte(known+" "+string(secret["destination.pub"])), 0o600); err != nil {
		return nil, fmt.Errorf("write known_hosts: %w", err)
	}
	return s, nil
}

// SSHArgs are VolSync's ssh options: the pinned host key, the identity,
// connection sharing.
func (s *Source) SSHArgs() []string {
	return []string{"-i", s.identity, "-p", strconv.Itoa(s.port),
		"-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + s.knownHosts, "-o", "CheckHostIP=no",
		"-o", "ControlMaster=auto", "-o", "ControlPath=" + filepath.Join(s.dir, "cm"), "-o", "ControlPersist=5",
		"-o", "ConnectTimeout=30", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-F", "/dev/null"}
}

// Flags are VolSync's rsync flags.
var Flags = []string{"-aAhHSxz", "--delete", "--itemize-changes", "--info=stats2,misc2"}

// Identity is the path of the source's private key.
func (s *Source) Identity() string { return s.identity }

// Rsync sends dir's content as VolSync's source does, with extra flags
// after VolSync's, and returns rsync's output.
func (s *Source) Rsync(ctx context.Context, dir string, extra ...string) (string, error) {
	args := append(append(append([]string{}, Flags...), extra...), "-e", "ssh "+strings.Join(s.SSHArgs(), " "),
		strings.TrimSuffix(dir, "/")+"/", "root@"+s.host+":.")
	return s.run(ctx, "rsync", args...)
}

// Shutdown tells the destination the sync ended with code.
func (s *Source) Shutdown(ctx context.Context, code int) (string, error) {
	return s.run(ctx, "ssh", append(s.SSHArgs(), "root@"+s.host, "shutdown", strconv.Itoa(code))...)
}

// Close ends the shared connection.
func (s *Source) Close() {
	_, _ = s.run(context.Background(), "ssh", append(s.SSHArgs(), "-O", "exit", "root@"+s.host)...)
}

func (s *Source) run(ctx context.Context, name string, args ...string) (string, error) {
	argv := append(append(append([]string{}, s.Prefix...), name), args...)
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", name, err, out)
	}
	return string(out), nil
}

// destinationCommand is the forced command of a VolSync-style destination:
// rrsync rooted at the volume for rsync, and `shutdown N` recorded.
const destinationCommand = `#!/bin/bash
set -eu
case "$SSH_ORIGINAL_COMMAND" in
  shutdown\ *) echo "${SSH_ORIGINAL_COMMAND#shutdown }" > %q; exit 0 ;;
  rsync\ *) LANG=C exec /usr/bin/rrsync %q ;;
  *) echo "not allowed: $SSH_ORIGINAL_COMMAND" >&2; exit 1 ;;
esac
`

// Destination is a stock sshd set up like VolSync's destination.
type Destination struct {
	// Port is where it listens.
	Port int
	// ShutdownFile holds the N of the last `shutdown N`.
	ShutdownFile string
	cmd          *exec.Cmd
}

// StartDestination runs sshd on address (host:0 picks a port) serving
// data with the Secret's keys; files go under dir. Each of plainKeys may
// log in without restriction (benchmarks of plain rsync and ssh). log
// receives sshd's output.
func StartDestination(dir string, secret map[string][]byte, data, address string, log func(string), plainKeys ...[]byte) (*Destination, error) {
	d := &Destination{ShutdownFile: filepath.Join(dir, "shutdown")}
	hostKey := filepath.Join(dir, "ssh_host_rsa_key")
	if err := os.WriteFile(hostKey, secret["destination"], 0o600); err != nil {
		return nil, fmt.Errorf("write host key: %w", err)
	}
	command := filepath.Join(dir, "destination-command.sh")
	if err := os.WriteFile(command, []byte(fmt.Sprintf(destinationCommand, d.ShutdownFile, data)), 0o755); err != nil {
		return nil, fmt.Errorf("write forced command: %w", err)
	}
	// sshd runs the forced command through the user's shell: quoted, so
	// that a path with parentheses (a subtest's name) stays one word.
	if strings.ContainsAny(command, `'"`) {
		return nil, fmt.Errorf("directory %s: quotes cannot be used in a forced command's path", dir)
	}
	lines := fmt.Sprintf(`command="'%s'",restrict %s`, command, secret["source.pub"])
	for _, pk := range plainKeys {
		lines += string(pk)
	}
	auth := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(auth, []byte(lines), 0o600); err != nil {
		return nil, fmt.Errorf("write authorized_keys: %w", err)
	}
	host, port, err := freePort(address)
	if err != nil {
		return nil, err
	}
	d.Port = port
	cfg := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`Port %d
ListenAddress %s
HostKey %s
AuthorizedKeysFile %s
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
LogLevel VERBOSE
`, port, host, hostKey, auth)), 0o600); err != nil {
		return nil, fmt.Errorf("write sshd_config: %w", err)
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return nil, fmt.Errorf("sshd's privilege separation directory: %w", err)
	}
	d.cmd = exec.Command("/usr/sbin/sshd", "-D", "-e", "-f", cfg)
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		return nil, fmt.Errorf("sshd output: %w", err)
	}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			log("sshd: " + sc.Text())
			if strings.Contains(sc.Text(), "Server listening") {
				close(listening)
			}
		}
	}()
	select {
	case <-listening:
		return d, nil
	case <-time.After(20 * time.Second):
		d.Stop()
		return nil, fmt.Errorf("sshd did not start listening on %s:%d", host, port)
	}
}

// freePort picks a free port on address's host.
func freePort(address string) (string, int, error) {
	ln, err := net.Listen("tcp", address)
	if err != nil {
		return "", 0, fmt.Errorf("find a free port on %s: %w", address, err)
	}
	defer ln.Close()
	a := ln.Addr().(*net.TCPAddr)
	return a.IP.String(), a.Port, nil
}

// Shutdown is the N of the last `shutdown N` ("" before any).
func (d *Destination) Shutdown() string {
	raw, err := os.ReadFile(d.ShutdownFile)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(raw))
}

// Stop ends sshd.
func (d *Destination) Stop() {
	_ = d.cmd.Process.Kill()
	_ = d.cmd.Wait()
}
