// Package kind_test checks the kind scripts, which cannot run here (no
// container runtime): they must at least be shellcheck-clean.
package kind_test

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestScriptsAreShellcheckClean runs shellcheck (installed by make test's
// set-up) on the kind scripts and the project's other shell scripts.
func TestScriptsAreShellcheckClean(t *testing.T) {
	if testing.Short() {
		t.Skip("needs shellcheck; runs in make test")
	}
	scripts, err := filepath.Glob("*.sh")
	require.NoError(t, err)
	hack, err := filepath.Glob("../../hack/*.sh")
	require.NoError(t, err)
	require.NotEmpty(t, scripts)
	if _, err := exec.LookPath("shellcheck"); err != nil {
		t.Fatal("shellcheck is missing: make test installs it (hack/install-deps.sh), or apt-get install shellcheck")
	}
	args := append([]string{"-x", "-P", "SCRIPTDIR", "--severity=info"}, append(scripts, hack...)...)
	out, err := exec.Command("shellcheck", args...).CombinedOutput()
	require.NoError(t, err, "shellcheck:\n%s", out)
}
