package driver

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// registration answers kubelet's plugin watcher.
type registration struct {
	registerapi.UnimplementedRegistrationServer
	d *Driver
}

// Register serves kubelet's plugin registration socket in dir (kubelet's
// plugins_registry) until ctx ends, as node-driver-registrar does beside a
// CSI driver: kubelet finds the socket, learns the driver's name and
// endpoint, calls NodeGetInfo and writes the node's CSINode entry itself.
// The endpoint must be the same path in kubelet's view as in the driver's.
func (d *Driver) Register(ctx context.Context, dir string) error {
	// node-driver-registrar names it <driver>-reg.sock; kubelet takes any
	// name, and a short one fits the tests' long paths in a sockaddr_un.
	path := filepath.Join(dir, fmt.Sprintf("%x", sha256.Sum256([]byte(d.cfg.Name)))[:12]+"-reg.sock")
	_ = os.Remove(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("driver: registration dir: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("driver: registration listen: %w", err)
	}
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, &registration{d: d})
	stop := context.AfterFunc(ctx, func() { srv.GracefulStop(); _ = os.Remove(path) })
	defer stop()
	if err := srv.Serve(ln); err != nil {
		return fmt.Errorf("driver: registration serve: %w", err)
	}
	return nil
}

// GetInfo names the driver and its socket.
func (r *registration) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{Type: registerapi.CSIPlugin, Name: r.d.cfg.Name, Endpoint: r.d.cfg.Endpoint,
		SupportedVersions: []string{"1.0.0"}}, nil
}

// NotifyRegistrationStatus logs kubelet's verdict; a refusal is the
// driver's operator's news.
func (r *registration) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if !s.PluginRegistered {
		r.d.cfg.Log.Error(nil, "kubelet refused the registration", "error", s.Error)
	} else {
		r.d.cfg.Log.Info("registered with kubelet")
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}
