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
	"syscall"

	"github.com/go-logr/logr/funcr"

	"github.com/ferrysync/ferry/test/csidriver/driver"
)

func main() {
	var cfg driver.Config
	flag.StringVar(&cfg.Name, "name", driver.Name, "CSI driver name")
	flag.StringVar(&cfg.Endpoint, "endpoint", "/var/lib/kubelet/plugins/"+driver.Name+"/csi.sock", "unix socket to serve CSI on")
	flag.StringVar(&cfg.NodeID, "node-id", "", "name of the node this instance serves (empty: controller side only)")
	flag.StringVar(&cfg.DataDir, "data-dir", "/var/lib/ferry-csi", "directory for images, snapshots and metadata, shared by all instances")
	flag.BoolVar(&cfg.AttachRequired, "attach-required", false, "require ControllerPublish before NodeStage")
	flag.Int64Var(&cfg.Capacity, "capacity", 100<<30, "bytes the driver offers")
	registration := flag.String("registration-dir", "", "kubelet's plugin registration directory (e.g. /var/lib/kubelet/plugins_registry): register there as a node plugin, as node-driver-registrar would")
	flag.Parse()
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
