package kubelet

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestPluginSocket(t *testing.T) {
	assert.Equal(t, "/var/lib/kubelet/plugins/hostpath.csi.k8s.io/csi.sock", PluginSocket("/var/lib/kubelet", "hostpath.csi.k8s.io"))
}

func TestCheckName(t *testing.T) {
	assert.NoError(t, CheckName("volume", "pvc-0123.abc"))
	for _, bad := range []string{"", "..", "../etc", "a/b", "UPPER", "-x"} {
		assert.ErrorContains(t, CheckName("volume", bad), `volume name "`+bad+`"`, bad)
	}
}
