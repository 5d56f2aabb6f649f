// Command ferry-cluster starts, for a person at a terminal, the clusters the
// tests use: each with its control plane, the local CSI driver and sidecars,
// and simulated nodes in network namespaces running kube-proxy, all joined on
// one node network. It prints each cluster's KUBECONFIG and tears
// everything down on Ctrl-C. Run it as root with the binaries that make
// testenv builds (make cluster does both).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/go-logr/logr/funcr"

	"github.com/ferrysync/ferry/test/cluster"
)

func main() {
	n := flag.Int("clusters", 2, "how many clusters to start (1 or 2)")
	bin := flag.String("bin", "bin/testenv", "directory with the binaries make testenv builds (KUBEBUILDER_ASSETS wins when set)")
	images := flag.String("images", "", "with real nodes (kubelet and containerd on each), the image archives make images builds (e.g. bin/images); empty: simulated nodes")
	flag.Parse()
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		abs, _ := filepath.Abs(*bin)
		os.Setenv("KUBEBUILDER_ASSETS", abs)
	}
	if *images != "" {
		abs, _ := filepath.Abs(*images)
		*images = abs
	}
	if err := run(*n, *images); err != nil {
		fmt.Fprintln(os.Stderr, "ferry-cluster:", err)
		os.Exit(1)
	}
}

func run(count int, images string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := funcr.New(func(prefix, args string) { fmt.Fprintln(os.Stderr, prefix, args) }, funcr.Options{})
	network, err := cluster.NewNetwork("fc", "10.251.0")
	if err != nil {
		return err
	}
	defer network.Close()
	var clusters []*cluster.Cluster
	defer func() {
		for _, c := range clusters {
			if err := c.Stop(); err != nil {
				fmt.Fprintln(os.Stderr, "ferry-cluster: stop:", err)
			}
		}
	}()
	for i := 0; i < count; i++ {
		c, err := cluster.Start(ctx, cluster.Options{Network: network, ServiceCIDR: fmt.Sprintf("10.%d.0.0/24", 96+i),
			LoadBalancerCIDR: fmt.Sprintf("10.%d.0.0/24", 98+i),
			Nodes:            []string{fmt.Sprintf("c%d-node-a", i+1), fmt.Sprintf("c%d-node-b", i+1)}, Log: log,
			Kubelet: images != "", Images: images})
		if err != nil {
			return err
		}
		clusters = append(clusters, c)
		fmt.Printf("cluster %d: KUBECONFIG=%s (nodes in network namespaces %s, %s)\n", i+1, c.Kubeconfig,
			c.Nodes[0].Net.Namespace, c.Nodes[1].Net.Namespace)
	}
	if len(clusters) == 2 {
		if err := cluster.Connect(clusters[0], clusters[1]); err != nil {
			return err
		}
	}
	fmt.Println("ready; Ctrl-C tears everything down")
	<-ctx.Done()
	return nil
}
