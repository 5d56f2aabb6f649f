package transfer_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/pkg/transfer/confine"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
	"github.com/ferrysync/ferry/pkg/transfer/sender"
	"github.com/ferrysync/ferry/pkg/transfer/sshkeys"
)

// dial connects with a source identity, pinning the given host key.
func dial(t testing.TB, port int, id ssh.Signer, hostKey ssh.PublicKey) (*ssh.Client, error) {
	t.Helper()
	return ssh.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port), &ssh.ClientConfig{
		User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(id)},
		HostKeyCallback: ssh.FixedHostKey(hostKey), Timeout: 10 * time.Second,
	})
}

// execute runs a command on a new session and returns its stderr and exit
// status.
func execute(t testing.TB, c *ssh.Client, cmd string) (string, int) {
	t.Helper()
	s, err := c.NewSession()
	require.NoError(t, err)
	defer s.Close()
	var stderr bytes.Buffer
	s.Stderr = &stderr
	err = s.Run(cmd)
	if ee, ok := err.(*ssh.ExitError); ok {
		return stderr.String(), ee.ExitStatus()
	}
	require.NoError(t, err)
	return stderr.String(), 0
}

func emptyDir(t testing.TB, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, entries, "nothing may be written to %s", dir)
}

// TestSymlinkInDestinationDoesNotLeadOut: the destination holds a symlink to
// a directory outside the volume, and the source sends a directory of the
// same name with files in it, and then files addressed through it.
func TestSymlinkInDestinationDoesNotLeadOut(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "hostile")
	dst, outside := t.TempDir(), t.TempDir()
	require.NoError(t, os.Symlink(outside, filepath.Join(dst, "escape")))
	require.NoError(t, os.Symlink("../../../../../../../..", filepath.Join(dst, "up")))
	var ev events
	_, port := serve(t, k, dst, &ev)

	src := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(src, "escape"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(src, "escape", "pwned"), []byte("x"), 0o644))
	_, err := push(t, k.src, port, src, nil)
	require.NoError(t, err)
	emptyDir(t, outside)
	assert.FileExists(t, filepath.Join(dst, "escape", "pwned"), "the symlink is replaced by the directory, inside the volume")

	// Writing into paths behind symlinks: the remote path goes through "up".
	require.NoError(t, os.Symlink(outside, filepath.Join(dst, "escape2")))
	for _, path := range []string{"escape2/", "up" + outside + "/"} {
		_, err = push(t, k.src, port, src, func(o *sender.Options) { o.Path = path })
		assert.Error(t, err, path)
	}
	emptyDir(t, outside)
}

// TestModifiedClientIsRefused sends what a hostile client could: paths with
// "..", absolute paths, the sender role, shells, port forwarding.
func TestModifiedClientIsRefused(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "hostile")
	dst := t.TempDir()
	var ev events
	_, port := serve(t, k, dst, &ev)
	c, err := dial(t, port, k.src.Identity, k.src.HostKey)
	require.NoError(t, err)
	defer c.Close()

	for cmd, want := range map[string]string{
		"rsync --server -logDtpre.iLsfxCIvu . ../../etc":                  "do not use ..",
		"rsync --server -logDtpre.iLsfxCIvu . /../../etc":                 "do not use ..",
		"rsync --server --sender -logDtpre.iLsfxCIvu . /etc":              "this endpoint only receives",
		"rsync --server -r --log-file=/etc/cron.d/x . .":                  "--log-file is not allowed",
		"rsync --server -r --temp-dir=/../../tmp . .":                     "do not use ..",
		"sh -c 'touch /tmp/pwned'":                                        `command "sh" not allowed`,
		"/usr/bin/rsync --server -r . .":                                  `command "/usr/bin/rsync" not allowed`,
		"rsync --server -logDtpre.iLsfxCIvu --files-from=/etc/shadow . .": "--files-from=/etc/shadow is not allowed",
		// The replica of a destination that does not allow it (Direct) is
		// its image: a sync cut short must not leave files half updated.
		"rsync --server -logDtpre.iLsfxCIvu --inplace . .": "option --inplace is not allowed",
	} {
		stderr, code := execute(t, c, cmd)
		assert.Equal(t, 1, code, cmd)
		assert.Contains(t, stderr, want, cmd)
	}

	s, err := c.NewSession()
	require.NoError(t, err)
	assert.Error(t, s.RequestPty("xterm", 80, 40, ssh.TerminalModes{}), "pty refused")
	var stderr bytes.Buffer
	s.Stderr = &stderr
	require.NoError(t, s.Shell())
	assert.Error(t, s.Wait())
	assert.Contains(t, stderr.String(), "no shell here")

	_, err = c.Dial("tcp", "127.0.0.1:22")
	assert.ErrorContains(t, err, "only session channels are served")
	_, err = c.Listen("tcp", "127.0.0.1:0")
	assert.Error(t, err, "remote port forwarding refused")
	emptyDir(t, dst)
}

// TestKeysOpenExactlyOneDestination: a wrong key, and destination A's keys
// against destination B, are turned away before anything runs.
func TestKeysOpenExactlyOneDestination(t *testing.T) {
	testenv.NeedRoot(t)
	a, b, stranger := keys(t, "dest-a"), keys(t, "dest-b"), keys(t, "stranger")
	dstA, dstB := t.TempDir(), t.TempDir()
	srv := endpoint.New(t.TempDir())
	t.Cleanup(srv.Close)
	addrA, err := srv.Add(endpoint.Destination{ID: "a", Keys: a.dst, Volume: dstA, Privileged: true, ListenAddr: "127.0.0.1:0"})
	require.NoError(t, err)
	addrB, err := srv.Add(endpoint.Destination{ID: "b", Keys: b.dst, Volume: dstB, Privileged: true, ListenAddr: "127.0.0.1:0"})
	require.NoError(t, err)
	portA, portB := addrA.(*net.TCPAddr).Port, addrB.(*net.TCPAddr).Port

	_, err = dial(t, portB, a.src.Identity, b.dst.HostKey.PublicKey())
	assert.ErrorContains(t, err, "unable to authenticate", "A's source key must not open B")
	_, err = dial(t, portA, stranger.src.Identity, a.dst.HostKey.PublicKey())
	assert.ErrorContains(t, err, "unable to authenticate", "an unknown key opens nothing")
	_, err = dial(t, portB, a.src.Identity, a.src.HostKey)
	assert.ErrorContains(t, err, "host key mismatch", "A's source must not accept B as A")

	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644))
	_, err = push(t, &sshkeys.Source{Identity: a.src.Identity, HostKey: b.dst.HostKey.PublicKey()}, portB, src, nil)
	assert.Error(t, err)
	_, err = push(t, a.src, portA, src, nil)
	require.NoError(t, err)
	assert.FileExists(t, filepath.Join(dstA, "f"))
	emptyDir(t, dstB)

	// A removed destination is gone at once.
	srv.Remove("a")
	_, err = dial(t, portA, a.src.Identity, a.dst.HostKey.PublicKey())
	assert.Error(t, err)
}

// TestSenderReadsNothingOutsideTheVolume: while a Direct sync of 50,000
// files runs, the "pod" that owns the live volume keeps swapping d/ for a
// symlink to a host directory whose files have the same names and hold a
// secret. The sender opens files by path; confined, the symlink resolves
// inside its own root, where the host directory does not exist, so the
// destination never receives the secret.
func TestSenderReadsNothingOutsideTheVolume(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "swap")
	src, dst, secrets := t.TempDir(), t.TempDir(), t.TempDir()
	const files, stable = 50000, 100
	require.NoError(t, os.Mkdir(filepath.Join(src, "d"), 0o755))
	for i := range files {
		name := fmt.Sprintf("f%05d", i)
		require.NoError(t, os.WriteFile(filepath.Join(src, "d", name), []byte("public"), 0o644))
		require.NoError(t, os.WriteFile(filepath.Join(secrets, name), []byte("SECRET"), 0o600))
	}
	// Files the pod leaves alone: they arrive whatever the swaps do.
	require.NoError(t, os.Mkdir(filepath.Join(src, "stable"), 0o755))
	for i := range stable {
		require.NoError(t, os.WriteFile(filepath.Join(src, "stable", fmt.Sprint(i)), []byte("public"), 0o644))
	}
	var ev events
	_, port := serve(t, k, dst, &ev)

	stop := make(chan struct{})
	swapped := make(chan int)
	go func() { // the tenant's pod
		n := 0
		d, real := filepath.Join(src, "d"), filepath.Join(src, "d.real")
		for {
			select {
			case <-stop:
				swapped <- n
				return
			default:
			}
			if os.Rename(d, real) == nil {
				_ = os.Symlink(secrets, d)
				n++
				_ = os.Remove(d)
				_ = os.Rename(real, d)
			}
		}
	}()
	res, err := push(t, k.src, port, src, nil)
	close(stop)
	t.Logf("the pod swapped d/ %d times during the sync", <-swapped)
	if err != nil {
		// Files read through the symlink are missing inside the confinement:
		// rsync reports them vanished (24) or unreadable (23).
		assert.Contains(t, []int{23, 24}, res.ExitCode, "only missing files may fail the sync: %v", err)
	}
	received := 0
	require.NoError(t, filepath.WalkDir(dst, func(p string, e os.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		received++
		data, err := os.ReadFile(p)
		require.NoError(t, err)
		assert.NotEqual(t, "SECRET", string(data), "%s came from outside the volume", p)
		return nil
	}))
	t.Logf("%d files received", received)
	entries, err := os.ReadDir(filepath.Join(dst, "stable"))
	require.NoError(t, err)
	assert.Len(t, entries, stable, "the sync ran: the files the pod left alone arrived")
}

// TestUnprivilegedDestinationPlantsNoRootFiles: into a destination whose
// namespace does not allow privileged movers, a sender pushes setuid and
// setgid binaries owned by root and by the receiver's own user, a setgid
// directory and a device node. On the
// volume the binary belongs to the receiver's ordinary user and has lost
// its setuid and setgid bits (a setuid file of that user is a way into
// whoever runs it), the directory its setgid bit, and no device exists. A
// destination set to run as uid or gid 0 without privilege is refused.
func TestUnprivilegedDestinationPlantsNoRootFiles(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "setuid")
	src, dst := t.TempDir(), t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "sh"), []byte("#!/bin/sh\nid\n"), 0o755))
	require.NoError(t, os.Chmod(filepath.Join(src, "sh"), 0o6755))
	require.NoError(t, os.WriteFile(filepath.Join(src, "mine"), []byte("#!/bin/sh\nid\n"), 0o755))
	require.NoError(t, os.Chown(filepath.Join(src, "mine"), int(endpoint.DefaultRunAs.UID), int(endpoint.DefaultRunAs.GID)))
	require.NoError(t, os.Chmod(filepath.Join(src, "mine"), 0o6755))
	require.NoError(t, os.Mkdir(filepath.Join(src, "shared"), 0o755))
	require.NoError(t, os.Chown(filepath.Join(src, "shared"), int(endpoint.DefaultRunAs.UID), int(endpoint.DefaultRunAs.GID)))
	require.NoError(t, os.Chmod(filepath.Join(src, "shared"), 0o2775))
	require.NoError(t, unix.Mknod(filepath.Join(src, "mem"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 1))))
	srv := endpoint.New(t.TempDir(), endpoint.WithLogger(testr.New(t)))
	t.Cleanup(srv.Close)
	addr, err := srv.Add(endpoint.Destination{ID: "u", Keys: k.dst, Volume: dst, ListenAddr: "127.0.0.1:0"})
	require.NoError(t, err)
	_, _ = push(t, k.src, addr.(*net.TCPAddr).Port, src, nil) // rsync reports the skipped device

	var st unix.Stat_t
	require.NoError(t, unix.Lstat(filepath.Join(dst, "sh"), &st))
	assert.Equal(t, uint32(endpoint.DefaultRunAs.UID), st.Uid, "the binary is the receiver's, not root's")
	assert.NotZero(t, st.Uid)
	assert.Equal(t, uint32(0o755), st.Mode&0o7777, "the binary's setuid and setgid bits are gone")
	require.NoError(t, unix.Lstat(filepath.Join(dst, "mine"), &st))
	assert.Equal(t, uint32(0o755), st.Mode&0o7777, "a binary of the receiver's own user loses them too")
	require.NoError(t, unix.Lstat(filepath.Join(dst, "shared"), &st))
	assert.Equal(t, uint32(0o775), st.Mode&0o7777, "the directory's setgid bit is gone")
	assert.NoFileExists(t, filepath.Join(dst, "mem"), "no device made")
	_, err = os.Lstat(filepath.Join(dst, "mem"))
	assert.True(t, os.IsNotExist(err), "nothing at all in the device's place: %v", err)
	require.NoError(t, unix.Lstat(dst, &st))
	assert.Equal(t, uint32(endpoint.DefaultRunAs.UID), st.Uid, "the volume root is given to the receiver's user")

	for _, id := range []confine.Identity{{UID: 0, GID: 4321}, {UID: 4321, GID: 0}} {
		_, err = srv.Add(endpoint.Destination{ID: fmt.Sprintf("as-%d-%d", id.UID, id.GID), Keys: k.dst, Volume: t.TempDir(),
			ListenAddr: "127.0.0.1:0", RunAs: &id})
		require.Error(t, err, "running as %d:%d without privilege", id.UID, id.GID)
		assert.Contains(t, err.Error(), "privileged-movers")
	}
}

// TestDevSymlinkLeavesHostDevicesAlone: a privileged destination receives a
// symlink dv -> /dev, then a device file sent into dv/ (through the remote
// path and as a directory of the same name). The host's /dev/null is
// unchanged: inside the confinement /dev holds only a read-only /dev/null.
func TestDevSymlinkLeavesHostDevicesAlone(t *testing.T) {
	testenv.NeedRoot(t)
	var before unix.Stat_t
	require.NoError(t, unix.Stat("/dev/null", &before))
	k := keys(t, "devlink")
	dst := t.TempDir()
	var ev events
	_, port := serve(t, k, dst, &ev)

	link := t.TempDir()
	require.NoError(t, os.Symlink("/dev", filepath.Join(link, "dv")))
	res, err := push(t, k.src, port, link, nil)
	require.NoError(t, err, res.Errors)

	// A node with the host's own numbers (1,3) and another mode and owner:
	// rsync keeps a node of the same numbers and changes its mode and owner
	// in place, which is what reached the host's /dev/null before /dev in
	// the confinement was a read-only node of its own.
	null := func(dir string) {
		require.NoError(t, unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o777, int(before.Rdev)))
		require.NoError(t, os.Lchown(filepath.Join(dir, "null"), 4242, 4242))
	}
	dev := t.TempDir()
	null(dev)
	_, _ = push(t, k.src, port, dev, func(o *sender.Options) { o.Path = "dv/" })
	nested := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(nested, "dv"), 0o755))
	null(filepath.Join(nested, "dv"))
	_, _ = push(t, k.src, port, nested, func(o *sender.Options) { o.Path = "/" })

	var after unix.Stat_t
	require.NoError(t, unix.Stat("/dev/null", &after))
	assert.Equal(t, before.Ino, after.Ino, "host /dev/null is the same inode")
	assert.Equal(t, before.Mode, after.Mode, "host /dev/null mode")
	assert.Equal(t, before.Uid, after.Uid, "host /dev/null owner")
	assert.Equal(t, before.Rdev, after.Rdev, "host /dev/null device")
}
