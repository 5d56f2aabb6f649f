package cluster

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

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

// startDrivers runs, for each driver name, a controller-side instance for
// the sidecars and one instance per node.
func (c *Cluster) startDrivers(ctx context.Context) error {
	for _, d := range c.Drivers {
		data := filepath.Join(c.Dir, "csi-data", d.Name)
		if err := c.runDriver(ctx, driver.Config{Name: d.Name, Endpoint: c.controllerSocket(d.Name), DataDir: data,
			Profile: d.Profile}, ""); err != nil {
			return err
		}
		for _, n := range c.Nodes {
			if c.kubelet {
				break // real nodes run the node plugin as a pod
			}
			if err := c.runDriver(ctx, driver.Config{Name: d.Name, Endpoint: n.PluginSocket(d.Name), NodeID: n.Name, DataDir: data,
				Profile: d.Profile, KubeletDir: n.KubeletDir}, n.RegistrationDir()); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *Cluster) controllerSocket(driverName string) string {
	return filepath.Join(c.Dir, "controller", driverName, "csi.sock")
}

// runDriver runs a driver instance and, for a node's, registers it in the
// node's registration directory as node-driver-registrar would.
func (c *Cluster) runDriver(ctx context.Context, cfg driver.Config, registration string) error {
	cfg.Log = c.log.WithValues("driver", cfg.Name, "node", cfg.NodeID)
	d, err := driver.New(cfg)
	if err != nil {
		return err
	}
	c.nDriver++
	go func() { c.drivers <- d.Run(ctx) }()
	if registration != "" {
		c.nDriver++
		go func() { c.drivers <- d.Register(ctx, registration) }()
	}
	return waitFor(10*time.Second, func() bool { _, err := os.Stat(cfg.Endpoint); return err == nil })
}
