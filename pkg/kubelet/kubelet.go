// Package kubelet knows the parts of kubelet's on-disk layout and plugin
// protocol that Ferry shares with it: how a CSI node plugin's socket is
// found (Plugins, through kubelet's plugin registration), where kubelet
// stages a CSI volume on the node, and which names may become a path
// element there. The agent, the CSI client and the test clusters all take
// these from here, so they cannot disagree.
package kubelet

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"k8s.io/apimachinery/pkg/util/validation"
)

// CSIPluginDir is kubelet's CSI volume plugin directory,
// <root>/plugins/kubernetes.io/csi: kubelet stages volumes below it, and
// node plugin containers mount it (with Bidirectional propagation)
// because kubelet hands them paths there. Kubelet itself never lists it:
// its cleanup and reconstruction walk only <root>/pods
// (pkg/kubelet/kubelet_volumes.go and
// pkg/kubelet/volumemanager/reconciler/reconstruct_common.go, v1.37.2).
func CSIPluginDir(root string) string {
	return filepath.Join(root, "plugins", "kubernetes.io", "csi")
}

// StagingPath is where kubelet stages (NodeStageVolume) the filesystem
// volume handle of driver on its node:
// <root>/plugins/kubernetes.io/csi/<driver>/<sha256(handle)>/globalmount
// (makeDeviceMountPath, pkg/volume/csi/csi_attacher.go, v1.37.2, lines
// 598-623). The CSI spec allows one staging path per volume per node, so
// whoever stages the volume on this node, kubelet or Ferry, stages it here.
func StagingPath(root, driver, handle string) string {
	return filepath.Join(CSIPluginDir(root), driver, fmt.Sprintf("%x", sha256.Sum256([]byte(handle))), "globalmount")
}

// StagedByKubelet reports whether kubelet has staged the volume at
// stagingPath itself: kubelet writes vol_data.json beside the staging path
// before NodeStageVolume and removes it after NodeUnstageVolume
// (saveVolumeData in csi_attacher.go's MountDevice, v1.37.2, line 371; UnmountDevice skips a volume without it, line 533), so
// while it is there kubelet will unstage the volume when its pods are done
// with it, and nobody else should.
func StagedByKubelet(stagingPath string) (bool, error) {
	_, err := os.Lstat(filepath.Join(filepath.Dir(stagingPath), "vol_data.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("check kubelet's staging of %s: %w", stagingPath, err)
	}
	return true, nil
}

// CheckName makes sure a name (a driver, a PersistentVolume, one of
// Ferry's volume directories) is a DNS-1123 subdomain: one path element
// that cannot climb out of the directory it is joined to. what says what
// the name is, for the error.
func CheckName(what, name string) error {
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return fmt.Errorf("%s name %q: %v", what, name, errs)
	}
	return nil
}
