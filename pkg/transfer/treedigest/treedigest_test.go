package treedigest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func tree(t *testing.T) (string, string) {
	t.Helper()
	root, outside := t.TempDir(), t.TempDir()
	for _, d := range []string{"a/b/c", "d", "e/f"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	for i, f := range []string{"a/x", "a/b/y", "a/b/c/z", "d/w", "e/f/v", "top"} {
		require.NoError(t, os.WriteFile(filepath.Join(root, f), []byte{byte(i), 'd', 'a', 't', 'a'}, 0o644))
	}
	require.NoError(t, os.Link(filepath.Join(root, "a/x"), filepath.Join(root, "d/x-link")))
	require.NoError(t, os.Symlink("a/b", filepath.Join(root, "rel")))
	require.NoError(t, os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o600))
	require.NoError(t, os.Symlink(outside, filepath.Join(root, "out")))
	return root, outside
}

func sum(t *testing.T, root string) Sum {
	t.Helper()
	s, err := Of(t.Context(), root)
	require.NoError(t, err)
	return s
}

// TestEveryChangeMovesTheSum: each kind of change a sync must carry gives
// another sum, among them a rewrite that keeps size and mtime (rsync's own
// quick check would miss it); reading and changes outside the tree (behind
// a symlink) do not.
func TestEveryChangeMovesTheSum(t *testing.T) {
	past := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	for name, change := range map[string]func(t *testing.T, root string){
		"same size, mtime restored": func(t *testing.T, root string) {
			p := filepath.Join(root, "a/b/y")
			st, err := os.Stat(p)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(p, []byte("XXXXX"), 0o644))
			require.NoError(t, os.Chtimes(p, st.ModTime(), st.ModTime()))
		},
		"chmod": func(t *testing.T, root string) { require.NoError(t, os.Chmod(filepath.Join(root, "a/x"), 0o600)) },
		"mtime only": func(t *testing.T, root string) {
			require.NoError(t, os.Chtimes(filepath.Join(root, "top"), past, past))
		},
		"xattr": func(t *testing.T, root string) {
			require.NoError(t, unix.Lsetxattr(filepath.Join(root, "d/w"), "user.k", []byte("v"), 0))
		},
		"new empty file": func(t *testing.T, root string) {
			require.NoError(t, os.WriteFile(filepath.Join(root, "a/b/c/new"), nil, 0o644))
		},
		"delete": func(t *testing.T, root string) { require.NoError(t, os.Remove(filepath.Join(root, "e/f/v"))) },
		"rename across directories": func(t *testing.T, root string) {
			require.NoError(t, os.Rename(filepath.Join(root, "d/w"), filepath.Join(root, "e/w")))
		},
		"hard link broken": func(t *testing.T, root string) {
			p := filepath.Join(root, "d/x-link")
			require.NoError(t, os.Remove(p))
			require.NoError(t, os.WriteFile(p, []byte{0, 'd', 'a', 't', 'a'}, 0o644))
		},
		"symlink retargeted": func(t *testing.T, root string) {
			require.NoError(t, os.Remove(filepath.Join(root, "rel")))
			require.NoError(t, os.Symlink("a/b/c", filepath.Join(root, "rel")))
		},
		"file becomes directory": func(t *testing.T, root string) {
			require.NoError(t, os.Remove(filepath.Join(root, "top")))
			require.NoError(t, os.Mkdir(filepath.Join(root, "top"), 0o755))
		},
		"ACL": func(t *testing.T, root string) {
			out, err := exec.Command("setfacl", "-m", "u:1234:r", filepath.Join(root, "a/b/c/z")).CombinedOutput()
			require.NoError(t, err, string(out))
		},
		"root's mode": func(t *testing.T, root string) { require.NoError(t, os.Chmod(root, 0o700)) },
	} {
		t.Run(name, func(t *testing.T) {
			root, _ := tree(t)
			before := sum(t, root)
			require.Equal(t, before, sum(t, root), "the same tree, the same sum")
			change(t, root)
			require.NotEqual(t, before, sum(t, root))
		})
	}
	t.Run("reading and what lies behind a symlink do not count", func(t *testing.T) {
		root, outside := tree(t)
		before := sum(t, root)
		_, err := os.ReadFile(filepath.Join(root, "a/x"))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(outside, "secret"), []byte("changed"), 0o600))
		require.NoError(t, os.WriteFile(filepath.Join(outside, "more"), nil, 0o600))
		require.Equal(t, before, sum(t, root))
	})
}

// TestWideTreeSumsAlike: a tree wider than the walker's goroutines sums the
// same every time (the parallel walk's order does not leak into the sum).
func TestWideTreeSumsAlike(t *testing.T) {
	root := t.TempDir()
	for i := 0; i < 64; i++ {
		d := filepath.Join(root, "d", string(rune('a'+i%26))+string(rune('a'+i/26)), "sub")
		require.NoError(t, os.MkdirAll(d, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(d, "f"), []byte{byte(i)}, 0o644))
	}
	first := sum(t, root)
	for i := 0; i < 20; i++ {
		require.Equal(t, first, sum(t, root))
	}
}

func TestNotADirectory(t *testing.T) {
	root, _ := tree(t)
	_, err := Of(t.Context(), filepath.Join(root, "out"))
	require.Error(t, err, "a symlink as the root is not followed")
}

// TestAnEndedContextStopsTheWalk: a release or shutdown does not wait for
// the walk of a whole volume.
func TestAnEndedContextStopsTheWalk(t *testing.T) {
	root, _ := tree(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := Of(ctx, root)
	require.ErrorIs(t, err, context.Canceled)
	_, err = Walk(ctx, root)
	require.ErrorIs(t, err, context.Canceled)
}
