// Package e2e is the top layer of Ferry's tests: two local clusters whose
// nodes run the real kubelet and containerd (test/cluster with Kubelet),
// Ferry installed in each from deploy/ with kubectl apply -k through an
// overlay that only names the images make images built, and the spec's flow
// driven the way its users run it, with application pods writing and
// checking the data. The process-based tests below it (test/controller,
// test/nodeagent) stay the faster lower layers.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/util/wait"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/test/cluster"
)

// The two clusters, Ferry installed in each; nil in -short mode.
var src, dst *cluster.Cluster

// ferryNamespace is where deploy/ installs Ferry.
const ferryNamespace = cluster.FerryNamespace

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	// The clusters' clients log nothing here; saying so keeps
	// controller-runtime from printing a stack about an unset logger.
	ctrllog.SetLogger(logr.Discard())
	root, err := testenv.RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	network, err := cluster.NewNetwork("fe", "10.247.0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer network.Close()
	ctx := context.Background()
	for _, c := range []struct {
		into               **cluster.Cluster
		name, svc, balance string
	}{{&src, "src", "10.92.0.0/24", "10.89.0.0/24"}, {&dst, "dst", "10.91.0.0/24", "10.90.0.0/24"}} {
		cl, err := cluster.Start(ctx, cluster.Options{Network: network, ServiceCIDR: c.svc, LoadBalancerCIDR: c.balance,
			Nodes: []string{c.name + "-node-a", c.name + "-node-b"}, Kubelet: true, Profiles: profiles,
			Images: filepath.Join(root, "bin", "images"), Log: logr.Discard()})
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e: start cluster:", err)
			return 1
		}
		*c.into = cl
		defer func() {
			if err := cl.Stop(); err != nil {
				fmt.Fprintln(os.Stderr, "e2e: stop cluster:", err)
			}
		}()
	}
	if err := cluster.Connect(src, dst); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	for _, c := range []*cluster.Cluster{src, dst} {
		if err := c.InstallFerry(ctx, root); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err, "\n", c.Logs(30))
			return 1
		}
	}
	return m.Run()
}

// waitFor polls ok until it holds or the timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, ok func() bool) error {
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true,
		func(context.Context) (bool, error) { return ok(), nil })
	if err != nil {
		return fmt.Errorf("timed out after %s: %w", timeout, err)
	}
	return nil
}

// need skips in -short mode, where no cluster runs.
func need(t *testing.T) {
	t.Helper()
	if src == nil {
		t.Skip("needs real-node clusters; runs in make test, not in -short mode")
	}
	testenv.NeedRoot(t)
}
