package cluster

import (
	"fmt"
	"maps"
	"slices"

	"github.com/ferrysync/ferry/test/csidriver/driver"
)

// Driver names: the default driver and one that requires attach, which
// the spec's classes use; each behaves as a strict real driver does
// (DefaultProfiles).
const (
	DriverName       = driver.Name
	AttachDriverName = "attach." + driver.Name
)

// DefaultProfiles are how the default drivers behave: the default one as
// csi-driver-host-path (registered under another socket directory than its
// name, one staging path per volume), the attach one as AWS EBS (attach,
// a device path in the publish context, an attach limit).
var DefaultProfiles = map[string]string{DriverName: "hostpath", AttachDriverName: "ebs"}

// Driver is one CSI driver a cluster runs: a controller-side instance for
// the sidecars and a node plugin per node, with its classes.
type Driver struct {
	// Name is the CSI driver name.
	Name string
	// Profile is the real driver it behaves as.
	Profile driver.Profile
	// StorageClasses and SnapshotClasses provision and snapshot with it
	// (no snapshot class: no snapshotter).
	StorageClasses, SnapshotClasses []string
	// StageSecret, for a profile that requires stage secrets, is the
	// Secret its classes name as their node-stage secret (created with the
	// cluster, in kube-system, with each key the profile requires).
	StageSecret string
}

// stageSecretNamespace holds the drivers' stage secrets, as an installer
// of ceph-csi keeps them beside the driver.
const stageSecretNamespace = "kube-system"

// ProfileClass and ProfileSnapshotClass name the classes of a profile's
// own driver (Options.Profiles).
func ProfileClass(profile string) string         { return profile + "-sc" }
func ProfileSnapshotClass(profile string) string { return profile + "-vsc" }

// clusterDrivers are the default drivers and one per extra profile.
func clusterDrivers(extra []string) ([]Driver, error) {
	ds := []Driver{
		{Name: DriverName, Profile: driver.Profiles[DefaultProfiles[DriverName]], StorageClasses: []string{StorageClass, DefaultStorageClass},
			SnapshotClasses: []string{SnapshotClass, DefaultSnapshotClass}},
		{Name: AttachDriverName, Profile: driver.Profiles[DefaultProfiles[AttachDriverName]], StorageClasses: []string{AttachStorageClass}},
	}
	for _, name := range extra {
		p, ok := driver.Profiles[name]
		if !ok {
			return nil, fmt.Errorf("cluster: no driver profile %q", name)
		}
		if slices.Contains(slices.Collect(maps.Values(DefaultProfiles)), name) {
			return nil, fmt.Errorf("cluster: profile %q is a default driver's already", name)
		}
		d := Driver{Name: p.Driver(), Profile: p, StorageClasses: []string{ProfileClass(name)},
			SnapshotClasses: []string{ProfileSnapshotClass(name)}}
		if len(p.StageSecrets) > 0 {
			d.StageSecret = name + "-stage-secret"
		}
		ds = append(ds, d)
	}
	return ds, nil
}
