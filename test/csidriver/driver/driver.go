// Package driver is a small CSI driver for Ferry's tests and demo: volumes
// are ext4 filesystems in sparse image files, staged through loop devices,
// so mounts are real mounts and Block volumes are real block devices.
// Snapshots are frozen copies of a volume's image; clones and restores copy
// an image. Several driver instances on one machine (one per simulated node,
// each with its own node ID and socket) share the data directory and its
// metadata, guarded by a file lock.
//
// It is test infrastructure, not part of Ferry's images. It follows the CSI
// spec's idempotency rules, proven by csi-sanity in make test.
package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/go-logr/logr"
	"google.golang.org/grpc"
)

// Name is the driver's CSI name.
const Name = "local.csi.ferrysync.io"

// TopologyKey is the topology segment that names a simulated node.
const TopologyKey = "topology.local.csi.ferrysync.io/node"

// Config says how one driver instance runs.
type Config struct {
	// Name is the CSI driver name (default Name); a second name lets one
	// cluster have an attach-required driver beside a plain one.
	Name string
	// Endpoint is the unix socket path to serve on.
	Endpoint string
	// NodeID names the node this instance serves as; empty for an instance
	// that serves only the controller side (for the sidecars).
	NodeID string
	// DataDir holds images, snapshots and metadata, shared by all instances.
	DataDir string
	// Profile is how strict the driver is, after a real driver
	// (Profiles); the zero Profile is lenient.
	Profile Profile
	// KubeletDir is the node's kubelet root, against which the profile's
	// Visible directories are read.
	KubeletDir string
	// Capacity is the total bytes the driver offers (GetCapacity).
	Capacity int64
	// Log receives the calls.
	Log logr.Logger
}

// Driver serves Identity, Controller and Node.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	cfg   Config
	store *store
}

// New prepares the data directory.
func New(cfg Config) (*Driver, error) {
	if cfg.DataDir == "" || cfg.Endpoint == "" {
		return nil, errors.New("driver: endpoint and data dir are required")
	}
	if cfg.Name == "" {
		cfg.Name = Name
	}
	if cfg.Capacity == 0 {
		cfg.Capacity = 100 << 30
	}
	if cfg.Log.GetSink() == nil {
		cfg.Log = logr.Discard()
	}
	for _, d := range []string{"volumes", "snapshots"} {
		if err := os.MkdirAll(filepath.Join(cfg.DataDir, d), 0o700); err != nil {
			return nil, fmt.Errorf("driver: create data dir: %w", err)
		}
	}
	d := &Driver{cfg: cfg, store: &store{dir: cfg.DataDir}}
	if cfg.NodeID == "" {
		return d, nil
	}
	// Register the node, so the controller can tell a real node from a typo.
	if err := d.store.update(func(st *state) error {
		if st.Nodes == nil {
			st.Nodes = map[string]bool{}
		}
		st.Nodes[cfg.NodeID] = true
		return nil
	}); err != nil {
		return nil, fmt.Errorf("driver: register node: %w", err)
	}
	return d, nil
}

// Run serves until ctx ends.
func (d *Driver) Run(ctx context.Context) error {
	_ = os.Remove(d.cfg.Endpoint)
	if err := os.MkdirAll(filepath.Dir(d.cfg.Endpoint), 0o755); err != nil {
		return fmt.Errorf("driver: socket dir: %w", err)
	}
	ln, err := net.Listen("unix", d.cfg.Endpoint)
	if err != nil {
		return fmt.Errorf("driver: listen: %w", err)
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(d.logCalls))
	csi.RegisterIdentityServer(srv, d)
	csi.RegisterControllerServer(srv, d)
	csi.RegisterNodeServer(srv, d)
	stop := context.AfterFunc(ctx, srv.GracefulStop)
	defer stop()
	if err := srv.Serve(ln); err != nil {
		return fmt.Errorf("driver: serve: %w", err)
	}
	return nil
}

func (d *Driver) logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	resp, err := h(ctx, req)
	if err != nil {
		d.cfg.Log.Info("call failed", "method", info.FullMethod, "error", err.Error())
	} else {
		d.cfg.Log.V(1).Info("call", "method", info.FullMethod)
	}
	return resp, err
}

func (d *Driver) imagePath(id string) string {
	return filepath.Join(d.cfg.DataDir, "volumes", id+".img")
}

func (d *Driver) snapshotPath(id string) string {
	return filepath.Join(d.cfg.DataDir, "snapshots", id+".img")
}

// GetPluginInfo names the driver.
func (d *Driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.cfg.Name, VendorVersion: "0.1.0"}, nil
}

// GetPluginCapabilities says there is a controller and topology.
func (d *Driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	caps := []csi.PluginCapability_Service_Type{
		csi.PluginCapability_Service_CONTROLLER_SERVICE,
		csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS,
	}
	resp := &csi.GetPluginCapabilitiesResponse{}
	for _, c := range caps {
		resp.Capabilities = append(resp.Capabilities, &csi.PluginCapability{
			Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: c}},
		})
	}
	return resp, nil
}

// Probe is always ready.
func (d *Driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{}, nil
}
