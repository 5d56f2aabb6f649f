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
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/test/cluster"
)

// The two clusters, Ferry installed in each; nil in -short mode.
var src, dst *cluster.Cluster

// ferryNamespace is where deploy/ installs Ferry.
const ferryNamespace = "ferry-system"

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
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
			Nodes: []string{c.name + "-node-a", c.name + "-node-b"}, Kubelet: true,
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
		if err := install(ctx, root, c); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err, "\n", c.Logs(30))
			return 1
		}
	}
	return m.Run()
}

// install applies deploy/ as a user does, through an overlay that only sets
// the images' tag to the one make images built, and waits until both
// controller replicas and an agent on every node are ready.
func install(ctx context.Context, root string, c *cluster.Cluster) error {
	dir, err := os.MkdirTemp(c.Dir, "overlay-")
	if err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	deploy, err := filepath.Rel(dir, filepath.Join(root, "deploy"))
	if err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	overlay := fmt.Sprintf(`resources:
  - %s
images:
  - name: ghcr.io/ferrysync/ferry-controller
    newTag: dev
  - name: ghcr.io/ferrysync/ferry-nodeagent
    newTag: dev
`, deploy)
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(overlay), 0o644); err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	out, err := exec.Command(filepath.Join(c.BinDir, "kubectl"), "--kubeconfig", c.Kubeconfig, "apply", "-k", dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("kubectl apply -k: %w: %s", err, out)
	}
	return waitFor(ctx, 3*time.Minute, func() bool {
		d := &appsv1.Deployment{}
		ds := &appsv1.DaemonSet{}
		return c.Client.Get(ctx, client.ObjectKey{Namespace: ferryNamespace, Name: "ferry-controller"}, d) == nil &&
			d.Status.AvailableReplicas == 2 &&
			c.Client.Get(ctx, client.ObjectKey{Namespace: ferryNamespace, Name: "ferry-nodeagent"}, ds) == nil &&
			ds.Status.NumberReady == int32(len(c.Nodes))
	})
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
