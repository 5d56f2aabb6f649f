package transfer_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ferrysync/ferry/internal/fstree"
	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/pkg/transfer/compression"
	"github.com/ferrysync/ferry/pkg/transfer/sender"
)

// TestFerrySourceToVolSyncDestination pushes with Ferry's client to a stock
// sshd + rrsync set up like VolSync's destination mover: with Ferry's
// default compression, then, after changes, with each other choice.
func TestFerrySourceToVolSyncDestination(t *testing.T) {
	testenv.NeedRoot(t)
	k := keys(t, "sshd-interop")
	src, dst := fixture(t), t.TempDir()
	d := volsyncDestination(t, k, dst)

	res, err := push(t, k.src, d.Port, src, nil)
	require.NoError(t, err, res.Errors)
	requireSame(t, src, dst, rrsyncDrops(t)...)
	assert.Equal(t, "0", d.Shutdown(), "the source ends the sync with shutdown 0")

	require.NoError(t, fstree.Change(src))
	for _, c := range []string{"lz4", "zlib:6", "none"} {
		require.NoError(t, os.WriteFile(filepath.Join(src, "log-"+c), []byte(strings.Repeat("GET /api "+c+"\n", 10000)), 0o644))
		compress, err := compression.Parse(c)
		require.NoError(t, err)
		res, err = push(t, k.src, d.Port, src, func(o *sender.Options) { o.Compression = compress })
		require.NoError(t, err, "%s: %s", c, res.Errors)
		requireSame(t, src, dst, rrsyncDrops(t)...)
	}
}

// rrsyncDrops lists the fixture paths a stock rrsync destination does not
// create: rrsync from rsync 3.5 on refuses devices and specials in a
// restricted directory (--drop-D), so the FIFO stays behind, as it would
// with a VolSync destination built on it. Older rrsync keeps it.
func rrsyncDrops(t testing.TB) []string {
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
	o := volsyncSource(t, k, port)
	rshCmd := fmt.Sprintf("ssh -i %s -p %d -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -F /dev/null", o.Identity(), port)
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
