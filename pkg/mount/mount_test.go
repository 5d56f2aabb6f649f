package mount

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	mountutils "k8s.io/mount-utils"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ferrysync/ferry/internal/testenv"
)

// TestBindReadOnly binds a directory of the same filesystem (the case
// mount-utils' cheap check misses), sees it as a mount point, cannot write
// through it while the source stays writable, and cleans up twice.
func TestBindReadOnly(t *testing.T) {
	testenv.NeedRoot(t)
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "deep", "dst")
	require.NoError(t, os.Mkdir(src, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(src, "f"), []byte("data"), 0o644))

	mounted, err := IsMountPoint(dst)
	require.NoError(t, err)
	require.False(t, mounted, "an absent path is not a mount point")
	require.NoError(t, New().BindReadOnly(src, dst))
	require.NoError(t, New().BindReadOnly(src, dst), "binding again is a no-op")
	mounted, err = IsMountPoint(dst)
	require.NoError(t, err)
	require.True(t, mounted)
	under, err := Under(dir)
	require.NoError(t, err)
	require.Equal(t, []string{dst}, under, "bound once, not twice")
	ro, err := ReadOnly(dst)
	require.NoError(t, err)
	assert.True(t, ro)

	got, err := os.ReadFile(filepath.Join(dst, "f"))
	require.NoError(t, err)
	assert.Equal(t, "data", string(got))
	err = os.WriteFile(filepath.Join(dst, "g"), nil, 0o644)
	assert.True(t, errors.Is(err, syscall.EROFS), "write through the bind: %v", err)
	require.NoError(t, os.WriteFile(filepath.Join(src, "g"), nil, 0o644), "the source stays writable")

	require.NoError(t, New().Cleanup(dst))
	require.NoError(t, New().Cleanup(dst))
	assert.NoFileExists(t, dst)
	assert.FileExists(t, filepath.Join(src, "f"))
}

// TestBindReadOnlyFile binds a single file (a block device is bound the
// same way).
func TestBindReadOnlyFile(t *testing.T) {
	testenv.NeedRoot(t)
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	require.NoError(t, os.WriteFile(src, []byte("device"), 0o644))
	require.NoError(t, New().BindReadOnly(src, dst))
	_, err := os.OpenFile(dst, os.O_WRONLY, 0)
	assert.True(t, errors.Is(err, syscall.EROFS), "open the bound file for writing: %v", err)
	require.NoError(t, New().Cleanup(dst))
	assert.NoFileExists(t, dst)
}

// TestKubeletMountRefusesHostilePVNames needs no root: a PV name is checked
// before it becomes part of a host path.
func TestKubeletMountRefusesHostilePVNames(t *testing.T) {
	root := t.TempDir()
	for _, name := range []string{"../../etc", "a/b", "", "..", "UPPER"} {
		_, err := KubeletMount(root, name, false)
		require.Error(t, err, name)
		require.NotErrorIs(t, err, ErrNoKubeletMount, name)
	}
	_, err := KubeletMount(root, "pvc-1", true)
	require.ErrorIs(t, err, ErrNoKubeletMount)
}

// TestBindReadOnlyAsks checks, without root, what a read-only bind asks of
// the mount tools: one bind with ro, nosuid and nodev.
func TestBindReadOnlyAsks(t *testing.T) {
	fake := mountutils.NewFakeMounter(nil)
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "target")
	require.NoError(t, NewWith(fake).BindReadOnly(src, dst))
	log := fake.GetLog()
	require.Len(t, log, 1)
	assert.Equal(t, mountutils.FakeAction{Action: mountutils.FakeActionMount, Target: dst, Source: src, FSType: ""}, log[0])
	mps, err := fake.List()
	require.NoError(t, err)
	require.Len(t, mps, 1)
	assert.Equal(t, []string{"bind", "ro", "nosuid", "nodev"}, mps[0].Opts)
}

// TestReadOnlyPublishFromAnotherNamespace: a node plugin pod publishes
// read-only the way mount-utils does (a bind, then a read-only remount) in
// its own mount namespace under the shared kubelet root. The bind
// propagates to the agent's namespace, the remount's flags do not: the
// agent sees the volume writable. MakeReadOnly closes that in the agent's
// namespace alone.
func TestReadOnlyPublishFromAnotherNamespace(t *testing.T) {
	testenv.NeedRoot(t)
	dir := t.TempDir()
	root, src := filepath.Join(dir, "kubelet"), filepath.Join(dir, "volume")
	target := filepath.Join(root, "target")
	require.NoError(t, os.MkdirAll(target, 0o755))
	require.NoError(t, os.Mkdir(src, 0o755))
	require.NoError(t, syscall.Mount(root, root, "", syscall.MS_BIND, ""))
	t.Cleanup(func() { _ = syscall.Unmount(root, syscall.MNT_DETACH) })
	require.NoError(t, syscall.Mount("", root, "", syscall.MS_SHARED, ""))

	out, err := exec.Command("unshare", "--mount", "--propagation", "unchanged", "sh", "-ec",
		`mount --bind "$0" "$1" && mount -o remount,bind,ro "$1" && grep -q " $1 ro," /proc/self/mountinfo`, src, target).CombinedOutput()
	require.NoError(t, err, "the plugin's own view is read-only: %s", out)
	t.Cleanup(func() { _ = syscall.Unmount(target, syscall.MNT_DETACH) })

	ro, err := ReadOnly(target)
	require.NoError(t, err)
	require.False(t, ro, "the remount did not propagate: the agent's copy is writable")
	require.NoError(t, MakeReadOnly(target))
	ro, err = ReadOnly(target)
	require.NoError(t, err)
	assert.True(t, ro)
	assert.ErrorIs(t, os.WriteFile(filepath.Join(target, "f"), nil, 0o644), syscall.EROFS)
	require.NoError(t, os.WriteFile(filepath.Join(src, "f"), nil, 0o644), "the volume itself stays writable")
}
