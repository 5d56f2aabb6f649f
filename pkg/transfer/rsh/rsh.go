// Package rsh lets a stock rsync client use the agent's own ssh connection as
// its remote shell, without copying the data through a helper process.
//
// rsync starts its remote shell (-e) as a child and talks to it over a
// socket pair or pipes. Ferry's remote shell is this executable again,
// "ferry-rsh": it connects to a unix socket the agent listens on, hands over
// its standard input and output as file descriptors (SCM_RIGHTS) together
// with the command line rsync asked for, then only waits to learn the remote
// command's exit status and exits with it, as ssh would. The agent reads and
// writes rsync's descriptors directly and moves the bytes over an ssh channel
// of a connection it holds, so the data takes the same path as with OpenSSH.
package rsh

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ferrysync/ferry/pkg/transfer/reexec"
)

const helperName = "ferry-rsh"

func init() { reexec.Register(helperName, helperMain) }

// Listener receives rsync's remote-shell requests on a unix socket.
type Listener struct {
	ln   *net.UnixListener
	path string
}

// Listen creates the socket in dir, which should be private to the agent.
func Listen(dir string) (*Listener, error) {
	path := filepath.Join(dir, "rsh.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen for rsync's remote shell: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restrict rsh socket: %w", err)
	}
	return &Listener{ln: ln, path: path}, nil
}

// Close stops listening and removes the socket.
func (l *Listener) Close() error { return l.ln.Close() }

// Socket is the listener's socket path on the host.
func (l *Listener) Socket() string { return l.path }

// Executable is the host path of the binary that runs the remote shell: the
// helper binary, or this executable. rsync starts it by path (a confined
// rsync from a bind of it), so it must be a real path, not reexec.Self.
func Executable() (string, error) {
	exe := reexec.Path()
	if exe != reexec.Self {
		return exe, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find own executable: %w", err)
	}
	return exe, nil
}

// Command is the value for rsync's -e option that starts the remote shell
// binary exe (see Executable) and reaches the listener at socket, both as
// rsync sees them.
func Command(exe, socket string) (string, error) {
	if strings.ContainsAny(exe+socket, " \t'\"\\") {
		return "", fmt.Errorf("paths %q and %q must not contain spaces or quotes (rsync splits -e)", exe, socket)
	}
	return exe + " " + helperName + " " + socket, nil
}

// Request is one remote-shell start by rsync.
type Request struct {
	// User is the remote user rsync asked for (-l), if any.
	User string
	// Host is the remote host rsync asked for.
	Host string
	// Command is the remote command line, escaped by rsync for a shell.
	Command string
	// In reads what rsync sends to the remote side.
	In *os.File
	// Out writes what the remote side sends to rsync.
	Out  *os.File
	conn *net.UnixConn
}

// message is what the helper sends along with the descriptors.
type message struct {
	Args []string `json:"args"`
}

// Accept waits for rsync's remote shell to connect and hand over. Only the
// remote shell of the rsync with process id parent counts (the socket's
// peer credentials name its process, whose parent must be that rsync, and
// its user, which must be ours): anyone else who reaches the socket first
// is turned away and the wait goes on.
func (l *Listener) Accept(ctx context.Context, parent int) (*Request, error) {
	stop := context.AfterFunc(ctx, func() { _ = l.ln.Close() })
	defer stop()
	var conn *net.UnixConn
	for conn == nil {
		c, err := l.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("accept rsync's remote shell: %w", err)
		}
		if err := checkPeer(c, parent); err != nil {
			c.Close()
			continue
		}
		conn = c
	}
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(2*4))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("read remote-shell request: %w", err)
	}
	fds, err := parseRights(oob[:oobn])
	if err != nil {
		conn.Close()
		return nil, err
	}
	var m message
	if err := json.Unmarshal(buf[:n], &m); err != nil {
		closeAll(fds)
		conn.Close()
		return nil, fmt.Errorf("parse remote-shell request: %w", err)
	}
	req := &Request{In: os.NewFile(uintptr(fds[0]), "rsync-out"), Out: os.NewFile(uintptr(fds[1]), "rsync-in"), conn: conn}
	if err := req.parseArgs(m.Args); err != nil {
		req.Close(255)
		return nil, err
	}
	return req, nil
}

// checkPeer makes sure the process at the other end of c is a child of
// parent running as this process's user.
func checkPeer(c *net.UnixConn, parent int) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return fmt.Errorf("peer credentials: %w", errors.Join(err, cerr))
	}
	if int(cred.Uid) != os.Getuid() {
		return fmt.Errorf("remote-shell peer runs as uid %d, not %d", cred.Uid, os.Getuid())
	}
	ppid, err := parentOf(int(cred.Pid))
	if err != nil {
		return err
	}
	if ppid != parent {
		return fmt.Errorf("remote-shell peer %d is a child of %d, not of rsync %d", cred.Pid, ppid, parent)
	}
	return nil
}

// parentOf reads a process's parent from /proc/<pid>/stat (after the
// command name, which may itself hold spaces and parentheses).
func parentOf(pid int) (int, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read peer process: %w", err)
	}
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	var state string
	var ppid int
	if _, err := fmt.Sscanf(string(raw[i+1:]), " %s %d", &state, &ppid); err != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	return ppid, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil || len(msgs) != 1 {
		return nil, errors.New("remote-shell request carried no descriptors")
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil {
		return nil, fmt.Errorf("parse descriptors: %w", err)
	}
	if len(fds) != 2 {
		closeAll(fds)
		return nil, fmt.Errorf("remote-shell request carried %d descriptors, want 2", len(fds))
	}
	return fds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

// parseArgs reads rsync's remote-shell arguments: [-l user] host command...
func (r *Request) parseArgs(args []string) error {
	if len(args) >= 2 && args[0] == "-l" {
		r.User, args = args[1], args[2:]
	}
	if len(args) < 2 {
		return fmt.Errorf("remote-shell request %q: want [-l user] host command", args)
	}
	r.Host, r.Command = args[0], strings.Join(args[1:], " ")
	return nil
}

// CloseWrite tells rsync the remote side has no more to send.
func (r *Request) CloseWrite() {
	if err := unix.Shutdown(int(r.Out.Fd()), unix.SHUT_WR); err != nil {
		_ = r.Out.Close() // a pipe, not a socket
	}
}

// Close hands the remote command's exit status to the helper, which exits
// with it, and releases the descriptors.
func (r *Request) Close(status int) {
	_, _ = r.conn.Write([]byte{byte(status)})
	_ = r.conn.Close()
	_ = r.In.Close()
	_ = r.Out.Close()
}

// helperMain is the remote shell rsync starts: ferry-rsh SOCKET ARGS...
func helperMain() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "ferry-rsh: usage: ferry-rsh SOCKET [-l user] host command")
		os.Exit(255)
	}
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: os.Args[1], Net: "unix"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "ferry-rsh: reach the agent:", err)
		os.Exit(255)
	}
	raw, _ := json.Marshal(message{Args: os.Args[2:]})
	if _, _, err := conn.WriteMsgUnix(raw, unix.UnixRights(0, 1), nil); err != nil {
		fmt.Fprintln(os.Stderr, "ferry-rsh: hand over to the agent:", err)
		os.Exit(255)
	}
	// The agent holds rsync's stream now; keep none of it open here.
	_ = unix.Close(0)
	_ = unix.Close(1)
	status := make([]byte, 1)
	if _, err := conn.Read(status); err != nil {
		fmt.Fprintln(os.Stderr, "ferry-rsh: the agent went away:", err)
		os.Exit(255)
	}
	os.Exit(int(status[0]))
}
