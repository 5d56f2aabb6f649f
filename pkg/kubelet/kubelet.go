// Package kubelet knows the parts of kubelet's on-disk layout that Ferry
// shares with it: where a CSI node plugin's socket is, and which names may
// become a path element there. The agent, the CSI client and the test
// clusters all take these from here, so they cannot disagree.
package kubelet

import (
	"fmt"
	"path/filepath"

	"k8s.io/apimachinery/pkg/util/validation"
)

// PluginSocket is where kubelet finds a node plugin that registered under
// driver: <root>/plugins/<driver>/csi.sock, the path every
// node-driver-registrar deployment uses.
func PluginSocket(root, driver string) string {
	return filepath.Join(root, "plugins", driver, "csi.sock")
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
