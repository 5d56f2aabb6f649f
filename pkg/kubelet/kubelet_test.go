package kubelet

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestStagingPath is kubelet's path for a volume handle of a driver
// (sha256 of the handle, in hex).
func TestStagingPath(t *testing.T) {
	assert.Equal(t, "/var/lib/kubelet/plugins/kubernetes.io/csi/d/"+
		"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/globalmount",
		StagingPath("/var/lib/kubelet", "d", "test"), "sha256(\"test\")")
}

// TestStagedByKubelet reads kubelet's vol_data.json beside the staging
// path.
func TestStagedByKubelet(t *testing.T) {
	stage := StagingPath(t.TempDir(), "d", "h")
	staged, err := StagedByKubelet(stage)
	require.NoError(t, err)
	assert.False(t, staged)
	require.NoError(t, mkfile(filepath.Join(filepath.Dir(stage), "vol_data.json")))
	staged, err = StagedByKubelet(stage)
	require.NoError(t, err)
	assert.True(t, staged)
}

func TestCheckName(t *testing.T) {
	assert.NoError(t, CheckName("volume", "pvc-0123.abc"))
	for _, bad := range []string{"", "..", "../etc", "a/b", "UPPER", "-x", "ferrysync.io~volumes"} {
		assert.ErrorContains(t, CheckName("volume", bad), `volume name "`+bad+`"`, bad)
	}
}
