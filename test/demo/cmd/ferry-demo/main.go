// Command ferry-demo is `make demo`: two clusters on this machine (test/
// cluster: control plane, the local CSI driver and sidecars, real nodes
// running kubelet and containerd in network and mount namespaces with
// kube-proxy, joined on one node network), Ferry installed in each from
// deploy/ with kubectl apply -k as pods, and the spec's flow walked with the
// spec's manifests (examples/volsync): a database volume in the source
// cluster written by a pod, the destination applied, its key Secret copied
// across clusters as the spec copies it, the source applied, a sync
// triggered. It shows what a user looks at, proves the replica by comparing
// listings (with checksums) that pods print of the source and of a claim
// restored from latestImage, then changes data and shows the next sync
// moving only the change. Ctrl-C (or the end) tears everything down; --down
// removes what a killed demo left.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/ferrysync/ferry/test/demo"
)

func main() {
	bin := flag.String("bin", "bin/testenv", "directory with the binaries make testenv builds (KUBEBUILDER_ASSETS wins when set)")
	down := flag.Bool("down", false, "remove what a killed demo left behind (processes, mounts, loop devices, namespaces, bridge) and exit")
	flag.Parse()
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		abs, _ := filepath.Abs(*bin)
		os.Setenv("KUBEBUILDER_ASSETS", abs)
	}
	if *down {
		if err := demo.Down(); err != nil {
			fmt.Fprintln(os.Stderr, "ferry-demo:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := demo.Run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "ferry-demo:", err)
		os.Exit(1)
	}
}
