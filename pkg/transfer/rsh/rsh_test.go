package rsh

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestAcceptTurnsAwayOthers: a process that is not the remote shell of the
// agent's rsync reaches the hand-over socket first and offers its own
// descriptors, as an attacker on the node would; Accept does not take it
// (its connection is closed) and goes on waiting for the real one.
func TestAcceptTurnsAwayOthers(t *testing.T) {
	l, err := Listen(t.TempDir())
	require.NoError(t, err)
	defer l.Close()
	// The rsync the agent started: another process, whose child the real
	// remote shell would be. This test process is not its child.
	rsync := exec.Command("sleep", "30")
	require.NoError(t, rsync.Start())
	defer func() { _ = rsync.Process.Kill(); _ = rsync.Wait() }()

	attacker, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: l.path, Net: "unix"})
	require.NoError(t, err)
	defer attacker.Close()
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	defer w.Close()
	_, _, err = attacker.WriteMsgUnix([]byte(`{"args":["-l","root","ferry-destination","rsync","--server","."]}`),
		unix.UnixRights(int(r.Fd()), int(w.Fd())), nil)
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := l.Accept(ctx, rsync.Process.Pid)
	assert.Nil(t, req, "the attacker's request is not taken")
	assert.True(t, errors.Is(err, context.DeadlineExceeded), "still waiting for rsync's own remote shell: %v", err)
	require.NoError(t, attacker.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = attacker.Read(make([]byte, 1))
	assert.Error(t, err, "the attacker's connection is closed")
}

func TestParentOf(t *testing.T) {
	ppid, err := parentOf(os.Getpid())
	require.NoError(t, err)
	assert.Equal(t, os.Getppid(), ppid)
}
