// Command csidriver runs Ferry's local CSI driver for tests and the demo:
// ext4 volumes in image files on loop devices, one instance per simulated
// node. main only turns flags into a driver.Config and runs it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/go-logr/logr/funcr"

	"github.com/ferrysync/ferry/test/csidriver/driver"
)

func main() {
	var cfg driver.Config
	profile := flag.String("profile", "", "the real driver to behave as: "+strings.Join(driver.ProfileNames(), ", ")+" (empty: lenient)")
	flag.StringVar(&cfg.Name, "name", "", "CSI driver name (default: the profile's)")
	flag.StringVar(&cfg.KubeletDir, "kubelet-dir", "/var/lib/kubelet", "the node's kubelet root")
	flag.StringVar(&cfg.Endpoint, "endpoint", "", "unix socket to serve CSI on (default: the profile's, under the kubelet root)")
	flag.StringVar(&cfg.NodeID, "node-id", "", "name of the node this instance serves (empty: controller side only)")
	flag.StringVar(&cfg.DataDir, "data-dir", "/var/lib/ferry-csi", "directory for images, snapshots and metadata, shared by all instances")
	flag.Int64Var(&cfg.Capacity, "capacity", 100<<30, "bytes the driver offers")
	registration := flag.String("registration-dir", "", "kubelet's plugin registration directory (e.g. /var/lib/kubelet/plugins_registry): register there as a node plugin, as node-driver-registrar would")
	flag.Parse()
	if *profile != "" {
		p, ok := driver.Profiles[*profile]
		if !ok {
			fmt.Fprintf(os.Stderr, "csidriver: no profile %q\n", *profile)
			os.Exit(2)
		}
		cfg.Profile = p
		if cfg.Name == "" {
			cfg.Name = p.Driver()
		}
	}
	if cfg.Name == "" {
		cfg.Name = driver.Name
	}
	if cfg.Endpoint == "" {
		cfg.Endpoint = cfg.Profile.SocketPath(cfg.KubeletDir, cfg.Name)
	}
	cfg.Log = funcr.New(func(prefix, args string) { fmt.Fprintln(os.Stderr, prefix, args) }, funcr.Options{})

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	d, err := driver.New(cfg)
	if err == nil {
		err = serve(ctx, d, *registration)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "csidriver:", err)
		os.Exit(1)
	}
}

// serve runs the driver, and its kubelet registration when asked, until
// ctx ends or either fails.
func serve(ctx context.Context, d *driver.Driver, registration string) error {
	if registration == "" {
		return d.Run(ctx)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reg := make(chan error, 1)
	go func() { reg <- d.Register(ctx, registration) }()
	err := d.Run(ctx)
	cancel()
	return errors.Join(err, <-reg)
}
