package transfer_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ferrysync/ferry/internal/fstree"
	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/pkg/transfer/source"
)

// volsyncDestinationCommand is the forced command of a VolSync-style
// destination: rrsync rooted at the volume for rsync, and `shutdown N`
// recorded in a file.
const volsyncDestinationCommand = `#!/bin/bash
set -eu
case "$SSH_ORIGINAL_COMMAND" in
  shutdown\ *) echo "${SSH_ORIGINAL_COMMAND#shutdown }" > "$SHUTDOWN_FILE"; exit 0 ;;
  *) exec /usr/bin/rrsync "$DATA_DIR" ;;
esac
`

// startSSHD runs a stock OpenSSH sshd set up like VolSync's destination on a
// free loopback port: host key from the Secret, the source's key forced to
// the command above with restrict. Each of plainKeys may log in without
// restriction (for benchmarks of plain rsync and ssh). It returns the port.
func startSSHD(t *testing.T, k *keyset, data, shutdownFile string, plainKeys ...[]byte) int {
	t.Helper()
	dir := t.TempDir()
	hostKey := filepath.Join(dir, "ssh_host_rsa_key")
	require.NoError(t, os.WriteFile(hostKey, k.dstData["destination"], 0o600))
	cmd := filepath.Join(dir, "destination-command.sh")
	script := strings.Replace(volsyncDestinationCommand, "set -eu", fmt.Sprintf("set -eu\nDATA_DIR=%s\nSHUTDOWN_FILE=%s", data, shutdownFile), 1)
	require.NoError(t, os.WriteFile(cmd, []byte(script), 0o755))
	auth := filepath.Join(dir, "authorized_keys")
	lines := fmt.Sprintf("command=%q,restrict %s", cmd, k.dstData["source.pub"])
	for _, pk := range plainKeys {
		lines += string(pk)
	}
	require.NoError(t, os.WriteFile(auth, []byte(lines), 0o600))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close())
	cfg := filepath.Join(dir, "sshd_config")
	require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
AuthorizedKeysFile %s
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
LogLevel VERBOSE
`, port, hostKey, auth)), 0o600))
	require.NoError(t, os.MkdirAll("/run/sshd", 0o755))
	sshd := exec.Command("/usr/sbin/sshd", "-D", "-e", "-f", cfg)
	stderr, err := sshd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, sshd.Start())
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			t.Log("sshd: " + sc.Text())
			if strings.Contains(sc.Text(), "Server listening") {
				close(listening)
			}
		}
	}()
	t.Cleanup(func() { _ = sshd.Process.Kill(); _ = sshd.Wait() })
	select {
	case <-listening:
	case <-time.After(20 * time.Second):
		t.Fatal("sshd did not start listening")
	}
	return port
}

// TestFerrySourceToVolSyncDestination pushes with Ferry's client to a stock
// sshd + rrsync set up like VolSync's destination mover.
func TestFerrySourceToVolSyncDestination(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "sshd-interop")
	src, dst := fixture(t), t.TempDir()
	shutdownFile := filepath.Join(t.TempDir(), "shutdown")
	port := startSSHD(t, k, dst, shutdownFile)

	res, err := push(t, k.src, port, src, func(o *source.Options) { o.Compress = true })
	require.NoError(t, err, res.Errors)
	requireSame(t, src, dst, rrsyncDrops(t)...)
	got, err := os.ReadFile(shutdownFile)
	require.NoError(t, err)
	assert.Equal(t, "0\n", string(got), "the source ends the sync with shutdown 0")

	require.NoError(t, fstree.Change(src))
	res, err = push(t, k.src, port, src, nil)
	require.NoError(t, err, res.Errors)
	requireSame(t, src, dst, rrsyncDrops(t)...)
}

// rrsyncDrops lists the fixture paths a stock rrsync destination does not
// create: rrsync from rsync 3.5 on refuses devices and specials in a
// restricted directory (--drop-D), so the FIFO stays behind, as it would
// with a VolSync destination built on it. Older rrsync keeps it.
func rrsyncDrops(t *testing.T) []string {
	t.Helper()
	script, err := os.ReadFile("/usr/bin/rrsync")
	require.NoError(t, err)
	if strings.Contains(string(script), "--drop-D") {
		return []string{"fifo"}
	}
	return nil
}

// TestPlainRsyncToFerryEndpoint: an operator's rsync -e ssh from outside
// Kubernetes reaches a destination with the source key.
func TestPlainRsyncToFerryEndpoint(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "plain")
	src, dst := fixture(t), t.TempDir()
	var ev events
	_, port := serve(t, k, dst, &ev)
	o := newOpenSSH(t, k, port)
	rshCmd := fmt.Sprintf("ssh -i %s -p %d -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -F /dev/null", o.identity, port)
	_, err := runLogged(t, "rsync", "-a", "-e", rshCmd, src+"/", "root@127.0.0.1:.")
	require.NoError(t, err)
	for _, p := range []string{"big.bin", "a/b/c/deep.txt", "ünïcødé-名前-🚀.txt", "owned"} {
		want, err := os.ReadFile(filepath.Join(src, p))
		require.NoError(t, err)
		got, err := os.ReadFile(filepath.Join(dst, p))
		require.NoError(t, err)
		assert.Equal(t, want, got, p)
	}
	st, err := os.Stat(filepath.Join(dst, "owned"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o644), st.Mode().Perm())
}
