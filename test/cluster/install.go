package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// FerryNamespace is where deploy/ installs Ferry.
const FerryNamespace = "ferry-system"

// ImageTag is the tag make images gives Ferry's images.
const ImageTag = "dev"

// InstallFerry installs Ferry on a cluster of real nodes as a user does:
// kubectl apply -k of an overlay of the repository's deploy/ that only sets
// the images' tag to the one make images built (imported into every node).
// It returns when both controller replicas and an agent on every node are
// ready.
func (c *Cluster) InstallFerry(ctx context.Context, repoRoot string) error {
	dir, err := os.MkdirTemp(c.Dir, "overlay-")
	if err != nil {
		return fmt.Errorf("cluster: overlay: %w", err)
	}
	deploy, err := filepath.Rel(dir, filepath.Join(repoRoot, "deploy"))
	if err != nil {
		return fmt.Errorf("cluster: overlay: %w", err)
	}
	overlay := fmt.Sprintf(`resources:
  - %s
images:
  - name: ghcr.io/ferrysync/ferry-controller
    newTag: %s
  - name: ghcr.io/ferrysync/ferry-nodeagent
    newTag: %s
`, deploy, ImageTag, ImageTag)
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(overlay), 0o644); err != nil {
		return fmt.Errorf("cluster: overlay: %w", err)
	}
	out, err := exec.CommandContext(ctx, filepath.Join(c.BinDir, "kubectl"), "--kubeconfig", c.Kubeconfig, "apply", "-k", dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("cluster: kubectl apply -k: %w: %s", err, out)
	}
	return waitFor(3*time.Minute, func() bool {
		d := &appsv1.Deployment{}
		ds := &appsv1.DaemonSet{}
		return c.Client.Get(ctx, client.ObjectKey{Namespace: FerryNamespace, Name: "ferry-controller"}, d) == nil &&
			d.Status.AvailableReplicas == 2 &&
			c.Client.Get(ctx, client.ObjectKey{Namespace: FerryNamespace, Name: "ferry-nodeagent"}, ds) == nil &&
			ds.Status.NumberReady == int32(len(c.Nodes))
	})
}
