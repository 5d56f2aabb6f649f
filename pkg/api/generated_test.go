package api

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrysync/ferry/internal/testenv"
)

// apiPackages are the packages controller-gen generates deepcopy code for.
var apiPackages = []string{"pkg/api/v1alpha1", "pkg/api/agent/v1alpha1"}

// controllerGen returns the pinned controller-gen the Makefile built, or skips
// when the tests run without it (go test outside make).
func controllerGen(t *testing.T) (bin, root string) {
	t.Helper()
	bin = os.Getenv("CONTROLLER_GEN")
	if bin == "" {
		if testing.Short() {
			t.Skip("CONTROLLER_GEN not set; make test sets it")
		}
		t.Fatal("CONTROLLER_GEN not set: run the tests with make test")
	}
	root, err := testenv.RepoRoot()
	require.NoError(t, err)
	return bin, root
}

func run(t *testing.T, dir, bin string, args ...string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	require.NoErrorf(t, err, "%s %v:\n%s", bin, args, out)
}

// TestDeepCopyIsFresh fails when zz_generated.deepcopy.go does not match the
// types: run make generate.
func TestDeepCopyIsFresh(t *testing.T) {
	bin, root := controllerGen(t)
	for _, pkg := range apiPackages {
		out := t.TempDir()
		run(t, root, bin, "object", "paths=./"+pkg, "output:object:dir="+out)
		want, err := os.ReadFile(filepath.Join(out, "zz_generated.deepcopy.go"))
		require.NoError(t, err)
		got, err := os.ReadFile(filepath.Join(root, pkg, "zz_generated.deepcopy.go"))
		require.NoError(t, err)
		require.Equalf(t, string(want), string(got), "%s/zz_generated.deepcopy.go is stale: run make generate", pkg)
	}
}

// TestCRDsAreFresh fails when deploy/crd does not match the types: run make
// manifests.
func TestCRDsAreFresh(t *testing.T) {
	bin, root := controllerGen(t)
	out := t.TempDir()
	run(t, root, bin, "crd", "paths=./pkg/api/...", "output:crd:dir="+out)
	want, err := filepath.Glob(filepath.Join(out, "*.yaml"))
	require.NoError(t, err)
	require.NotEmpty(t, want)
	var names []string
	for _, w := range want {
		name := filepath.Base(w)
		names = append(names, name)
		wb, err := os.ReadFile(w)
		require.NoError(t, err)
		gb, err := os.ReadFile(filepath.Join(root, "deploy", "crd", name))
		require.NoErrorf(t, err, "deploy/crd/%s missing: run make manifests", name)
		require.Equalf(t, string(wb), string(gb), "deploy/crd/%s is stale: run make manifests", name)
	}
	have, err := filepath.Glob(filepath.Join(root, "deploy", "crd", "*.*_*.yaml"))
	require.NoError(t, err)
	for _, h := range have {
		require.Truef(t, slices.Contains(names, filepath.Base(h)), "deploy/crd/%s has no type behind it: remove it or run make manifests", filepath.Base(h))
	}
}
