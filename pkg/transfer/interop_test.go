package transfer_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrysync/ferry/internal/volsyncmover"
)

// volsyncSource is a stock OpenSSH + rsync client set up like VolSync's
// source against a destination on the loopback port.
func volsyncSource(t testing.TB, k *keyset, port int) *volsyncmover.Source {
	t.Helper()
	// ControlPath is a unix socket: its path must stay short.
	dir, err := os.MkdirTemp("/tmp", "ssh")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	s, err := volsyncmover.NewSource(dir, k.srcData, "127.0.0.1", port)
	require.NoError(t, err)
	t.Cleanup(s.Close)
	return s
}

// volsyncDestination is a stock sshd + rrsync set up like VolSync's
// destination, serving data; each of plainKeys may log in unrestricted.
func volsyncDestination(t testing.TB, k *keyset, data string, plainKeys ...[]byte) *volsyncmover.Destination {
	t.Helper()
	d, err := volsyncmover.StartDestination(t.TempDir(), k.dstData, data, "127.0.0.1:0", func(s string) { t.Log(s) }, plainKeys...)
	require.NoError(t, err)
	t.Cleanup(d.Stop)
	return d
}

// vsRsync runs a VolSync-style rsync and logs its output.
func vsRsync(t testing.TB, s *volsyncmover.Source, dir string, extra ...string) string {
	t.Helper()
	out, err := s.Rsync(context.Background(), dir, extra...)
	t.Logf("volsync rsync:\n%s", out)
	require.NoError(t, err)
	return out
}

func runLogged(t testing.TB, name string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	t.Logf("%s %s:\n%s", name, strings.Join(args, " "), out)
	return string(out), err
}
