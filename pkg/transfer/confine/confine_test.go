package confine_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/pkg/transfer/confine"
	"github.com/ferrysync/ferry/pkg/transfer/reexec"
)

func TestMain(m *testing.M) {
	reexec.Init()
	os.Exit(m.Run())
}

// run runs confined rsync and returns its combined output and error.
func run(t *testing.T, spec confine.Spec) (string, error) {
	t.Helper()
	spec.Scratch = t.TempDir()
	cmd, err := confine.Command(context.Background(), spec)
	require.NoError(t, err)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	t.Logf("rsync %v:\n%s", spec.Args, out.String())
	return out.String(), err
}

func volume(t *testing.T) string {
	t.Helper()
	vol := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(vol, "src"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(vol, "src", "f"), []byte("data"), 0o644))
	return vol
}

func TestCopiesInsideTheVolume(t *testing.T) {
	testenv.NeedRoot(t)
	vol := volume(t)
	_, err := run(t, confine.Spec{Volume: vol, Privileged: true, Args: []string{"-a", "src/", "copy/"}})
	require.NoError(t, err)
	got, err := os.ReadFile(filepath.Join(vol, "copy", "f"))
	require.NoError(t, err)
	assert.Equal(t, "data", string(got))
}

func TestSymlinkOutOfTheVolumeLeadsNowhere(t *testing.T) {
	testenv.NeedRoot(t)
	vol := volume(t)
	outside := t.TempDir()
	require.NoError(t, os.Symlink(outside, filepath.Join(vol, "out")))
	require.NoError(t, os.Symlink("../../../../../../../..", filepath.Join(vol, "up")))
	for _, dst := range []string{"out/", "up/" + outside + "/"} {
		_, err := run(t, confine.Spec{Volume: vol, Privileged: true, Args: []string{"-a", "src/f", dst}})
		assert.Error(t, err, dst)
	}
	// a start directory behind a symlink is resolved inside the confinement too
	_, err := run(t, confine.Spec{Volume: vol, Dir: "out", Privileged: true, Args: []string{"-a", "/data/src/f", "."}})
	assert.Error(t, err)
	entries, err := os.ReadDir(outside)
	require.NoError(t, err)
	assert.Empty(t, entries, "nothing may be written outside the volume")
}

func TestReadOnlyVolume(t *testing.T) {
	testenv.NeedRoot(t)
	vol := volume(t)
	out, err := run(t, confine.Spec{Volume: vol, ReadOnly: true, Args: []string{"-a", "src/", "copy/"}})
	require.Error(t, err)
	assert.Contains(t, out, "Read-only file system")
	assert.NoDirExists(t, filepath.Join(vol, "copy"))
}

func TestNoNetwork(t *testing.T) {
	testenv.NeedRoot(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- struct{}{}
			c.Close()
		}
	}()
	out, err := run(t, confine.Spec{Volume: volume(t), ReadOnly: true,
		Args: []string{"--contimeout=2", "rsync://" + ln.Addr().String() + "/"}})
	require.Error(t, err)
	assert.Contains(t, out, "Network is unreachable")
	select {
	case <-accepted:
		t.Fatal("confined rsync reached the host's loopback")
	case <-time.After(100 * time.Millisecond):
	}
}

func TestRejectsBadSpecs(t *testing.T) {
	vol := t.TempDir()
	// The spec is checked before rsync is looked for: each case fails
	// for its own reason, with or without rsync on the machine.
	for want, spec := range map[string]confine.Spec{
		"volume and scratch must be absolute paths":     {Volume: "vol", Scratch: "/tmp"},
		"scratch must not be inside the volume":         {Volume: vol, Scratch: filepath.Join(vol, "s")},
		`dir "a/../../b" must not contain a .. element`: {Volume: vol, Scratch: t.TempDir(), Dir: "a/../../b"},
		"needs a user to run as":                        {Volume: vol, Scratch: t.TempDir()},
		"want an ordinary user":                         {Volume: vol, Scratch: t.TempDir(), RunAs: &confine.Identity{}},
		"shown under /ferry":                            {Volume: vol, Scratch: t.TempDir(), ReadOnly: true, Binds: []confine.Bind{{Host: "/bin/sh", Path: "/usr/bin/sh"}}},
	} {
		_, err := confine.Command(context.Background(), spec)
		assert.ErrorContains(t, err, want)
	}
}
