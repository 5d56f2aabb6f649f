package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	"github.com/ferrysync/ferry/pkg/csi"
	"github.com/ferrysync/ferry/pkg/mount"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
)

// publisher mounts and unmounts assignments' volumes on this node
// (csi.Publisher, through the CSI node plugin).
type publisher interface {
	Publish(ctx context.Context, name string, v csi.Volume) (string, error)
	Unpublish(ctx context.Context, name string) error
}

// server is the node's ssh endpoint as a destination sees it
// (endpoint.Server).
type server interface {
	Add(d endpoint.Destination) (net.Addr, error)
	Remove(id string)
	Hold(id string, hold bool)
	Ending(id string) bool
	Connected() int
}

// node is what the agent's two roles share: the node's settings, the
// uncached reads, the publisher, status writes, events and metric labels.
type node struct {
	cfg       Config
	cache     client.Reader // this node's assignments
	api       client.Reader // uncached: PVs, claims, CRs, Secrets
	publisher publisher
	status    statusWriter
	events    events.EventRecorder
	log       logr.Logger
}

// volumeName is the assignment's directory under the publisher's root:
// assignment names are DNS subdomains and unique in the namespace.
func volumeName(key types.NamespacedName) string { return key.Name }

// volumeFor builds what to publish from the live PV (its own secret
// references, resolved here) and the assignment (role, attachment).
func (n *node) volumeFor(ctx context.Context, ma *agentv1alpha1.MountAssignment, pv *corev1.PersistentVolume, readOnly bool) (csi.Volume, error) {
	src := pv.Spec.CSI
	v := csi.FromPersistentVolume(pv)
	v.ReadOnly = readOnly
	if a := ma.Spec.Volume.Attachment; a != nil {
		v.PublishContext, v.Attachment = a.Metadata, a.UID
	}
	var err error
	if v.StageSecrets, err = n.csiSecret(ctx, ma, agentv1alpha1.CSIStageSecret, src.NodeStageSecretRef); err != nil {
		return v, err
	}
	if v.PublishSecrets, err = n.csiSecret(ctx, ma, agentv1alpha1.CSIPublishSecret, src.NodePublishSecretRef); err != nil {
		return v, err
	}
	if ma.Spec.Volume.ReuseKubeletMount && readOnly {
		path, err := mount.KubeletMount(n.cfg.KubeletRoot, pv.Name, v.Block)
		if err == nil {
			v.Reuse = path
		} else if !errors.Is(err, mount.ErrNoKubeletMount) {
			return v, err
		}
	}
	return v, nil
}

// csiSecret reads the live PV's CSI node Secret ref (none: nil) from the
// controller's copy in Ferry's namespace (MountAssignment.CSISecretCopy),
// which must say it copies exactly ref. A copy not there yet, or of
// another Secret, is a failure to retry: the controller writes it with the
// assignment.
func (n *node) csiSecret(ctx context.Context, ma *agentv1alpha1.MountAssignment, kind agentv1alpha1.CSISecret, ref *corev1.SecretReference) (map[string]string, error) {
	if ref == nil {
		return nil, nil
	}
	sec := &corev1.Secret{}
	name := ma.CSISecretCopy(kind)
	if err := n.api.Get(ctx, client.ObjectKey{Namespace: n.cfg.Namespace, Name: name}, sec); err != nil {
		return nil, fmt.Errorf("read the controller's copy %s of the %s Secret %s/%s: %w", name, kind, ref.Namespace, ref.Name, err)
	}
	if got := sec.Annotations[agentv1alpha1.CSISecretAnnotation]; got != ref.Namespace+"/"+ref.Name {
		return nil, fmt.Errorf("the Secret %s/%s copies %q, not the %s Secret %s/%s that PersistentVolume %s names", n.cfg.Namespace, name, got,
			kind, ref.Namespace, ref.Name, ma.Spec.Volume.PersistentVolumeName)
	}
	out := make(map[string]string, len(sec.Data))
	for k, v := range sec.Data {
		out[k] = string(v)
	}
	return out, nil
}

// readKeys reads and parses a key Secret. Only Secrets in the agent's own
// namespace are key Secrets, so an assignment cannot point the agent at
// another namespace's; keys that do not parse are a refusal.
func readKeys[T any](ctx context.Context, n *node, ref agentv1alpha1.SecretReference, parse func(map[string][]byte) (T, error)) (T, error) {
	var none T
	if ref.Namespace != n.cfg.Namespace {
		return none, refuse("key Secret %s/%s is not in Ferry's namespace %s", ref.Namespace, ref.Name, n.cfg.Namespace)
	}
	sec := &corev1.Secret{}
	if err := n.api.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, sec); err != nil {
		return none, fmt.Errorf("read key Secret %s/%s: %w", ref.Namespace, ref.Name, err)
	}
	keys, err := parse(sec.Data)
	if err != nil {
		return none, refuse("key Secret %s/%s: %v", ref.Namespace, ref.Name, err)
	}
	return keys, nil
}

// publish publishes and records how long it took.
func (n *node) publish(ctx context.Context, key types.NamespacedName, v csi.Volume, role string) (string, error) {
	start := time.Now()
	path, err := n.publisher.Publish(ctx, volumeName(key), v)
	if err != nil {
		return "", err
	}
	publishSeconds.WithLabelValues(n.cfg.NodeName, role).Observe(time.Since(start).Seconds())
	return path, nil
}

// labels are the per-CR metric labels plus extra values.
func (n *node) labels(ma *agentv1alpha1.MountAssignment, extra ...string) []string {
	return append([]string{n.cfg.NodeName, ma.Spec.Owner.Namespace, ma.Spec.Owner.Name, role(ma)}, extra...)
}

func role(ma *agentv1alpha1.MountAssignment) string {
	if ma.Spec.Source != nil {
		return "source"
	}
	return "destination"
}

// syncEnded does what every ended sync does, in either role: count it,
// log it, and tell kubectl describe.
func (n *node) syncEnded(logger logr.Logger, ma *agentv1alpha1.MountAssignment, res *agentv1alpha1.SyncResult) {
	outcome := "succeeded"
	if !res.Succeeded {
		outcome = "failed"
	}
	syncsTotal.WithLabelValues(n.labels(ma, outcome)...).Inc()
	logger.Info("sync ended", "generation", res.Generation, "result", outcome, "bytesSent", res.BytesSent,
		"bytesReceived", res.BytesReceived, "files", res.FilesTransferred, "error", res.Error)
	if res.Succeeded {
		n.events.Eventf(ma, nil, corev1.EventTypeNormal, agentv1alpha1.ReasonSyncSucceeded, "Sync", "sync %d: %d bytes sent, %d received, %d files",
			res.Generation, res.BytesSent, res.BytesReceived, res.FilesTransferred)
		return
	}
	n.events.Eventf(ma, nil, corev1.EventTypeWarning, agentv1alpha1.ReasonSyncFailed, "Sync", "sync %d: %s", res.Generation, res.Error)
}
