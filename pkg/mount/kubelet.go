package mount

import (
	"github.com/ferrysync/ferry/pkg/kubelet"

	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ErrNoKubeletMount says that no pod on this node has the volume mounted, so
// the agent has to publish it itself.
var ErrNoKubeletMount = errors.New("no kubelet mount of the volume on this node")

// KubeletMount finds kubelet's mount of PersistentVolume pv on this node: for
// a filesystem volume <kubeletRoot>/pods/<pod uid>/volumes/kubernetes.io~csi/<pv>/mount,
// for a block volume the device kubelet's CSI plugin published at
// <kubeletRoot>/plugins/kubernetes.io/csi/volumeDevices/publish/<pv>/<pod uid>.
// Only a path that is mounted counts: a pod being torn down leaves empty
// directories behind. The PV name is checked first, because it becomes part
// of a host path.
func KubeletMount(kubeletRoot, pv string, block bool) (string, error) {
	if err := kubelet.CheckName("persistent volume", pv); err != nil {
		return "", err
	}
	kubeletRoot, err := filepath.EvalSymlinks(kubeletRoot)
	if err != nil {
		return "", fmt.Errorf("kubelet root: %w", err)
	}
	pattern := filepath.Join(kubeletRoot, "pods", "*", "volumes", "kubernetes.io~csi", pv, "mount")
	if block {
		pattern = filepath.Join(kubeletRoot, "plugins", "kubernetes.io", "csi", "volumeDevices", "publish", pv, "*")
	}
	candidates, err := filepath.Glob(pattern)
	if err != nil {
		return "", fmt.Errorf("look for kubelet mounts of %s: %w", pv, err)
	}
	for _, c := range candidates {
		mounted, err := IsMountPoint(c)
		if err != nil {
			return "", err
		}
		if !mounted {
			continue
		}
		// Kubelet's paths are its own; refuse one that a symlink leads
		// elsewhere.
		if real, err := filepath.EvalSymlinks(c); err != nil || real != c {
			continue
		}
		if _, err := os.Stat(c); err == nil {
			return c, nil
		}
	}
	return "", fmt.Errorf("%s: %w", pv, ErrNoKubeletMount)
}
