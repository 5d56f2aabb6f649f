package transfer_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// openssh holds the files a stock OpenSSH client needs to act as a VolSync
// source: the source's identity and a known_hosts file pinning the
// destination's host key.
type openssh struct {
	dir, identity, knownHosts string
}

func newOpenSSH(t *testing.T, k *keyset, port int) *openssh {
	t.Helper()
	// ControlPath is a unix socket: its path must stay short.
	dir, err := os.MkdirTemp("/tmp", "ssh")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	o := &openssh{dir: dir, identity: filepath.Join(dir, "source"), knownHosts: filepath.Join(dir, "known_hosts")}
	require.NoError(t, os.WriteFile(o.identity, k.srcData["source"], 0o600))
	line := fmt.Sprintf("[127.0.0.1]:%d %s", port, k.srcData["destination.pub"])
	require.NoError(t, os.WriteFile(o.knownHosts, []byte(line), 0o600))
	return o
}

// sshArgs are VolSync's source ssh options: the pinned host key, its
// identity, and ControlMaster connection sharing.
func (o *openssh) sshArgs(port int) []string {
	return []string{"-i", o.identity, "-p", fmt.Sprint(port),
		"-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + o.knownHosts,
		"-o", "ControlMaster=auto", "-o", "ControlPath=" + filepath.Join(o.dir, "cm"), "-o", "ControlPersist=5",
		"-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-F", "/dev/null"}
}

func (o *openssh) closeMaster(port int) {
	_ = exec.Command("ssh", append(o.sshArgs(port), "-O", "exit", "root@127.0.0.1")...).Run()
}

func runLogged(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	t.Logf("%s %s:\n%s", name, strings.Join(args, " "), out)
	return string(out), err
}
