// Package agent is Ferry's node agent: on one node it carries out the
// MountAssignments the controller writes for that node. A destination's
// volume is published read-write through the CSI node plugin and served on
// the node's ssh endpoint; a source's point-in-time copy is published
// read-only and pushed with rsync for the sync generation asked, then
// unmounted. Everything the agent does is reported in the assignment's
// status and in Prometheus metrics labelled by node.
//
// The agent is restart-safe: volumes are published under stable paths
// (pkg/csi), adopted again at start and taken down if no assignment wants
// them; a sync found running in status but not in the process is reported
// failed, never run a second time.
package agent

import (
	"sync"

	"github.com/ferrysync/ferry/pkg/api/scheme"

	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	"github.com/ferrysync/ferry/pkg/csi"
	"github.com/ferrysync/ferry/pkg/transfer/cgroup"
	"github.com/ferrysync/ferry/pkg/transfer/confine"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
)

// Config is the agent's settings, from its command line.
type Config struct {
	// NodeName is this node (the downward API's spec.nodeName).
	NodeName string
	// Namespace is Ferry's namespace, where assignments and key Secrets
	// live.
	Namespace string
	// KubeletRoot is kubelet's root directory (/var/lib/kubelet).
	KubeletRoot string
	// StateDir is the agent's own directory (scratch for confinement).
	StateDir string
	// SSHBindAddress is the address destinations listen on ("" for all).
	SSHBindAddress string
	// SSHAdvertiseAddress is the node address reported for destinations.
	SSHAdvertiseAddress string
	// Ports is where destinations' listeners take their ports.
	Ports PortRange
	// MaxTransfers is how many source transfers run at once on the node;
	// more wait, Queued.
	MaxTransfers int
	// MetricsAddr and ProbeAddr are where /metrics and /healthz, /readyz
	// listen.
	MetricsAddr, ProbeAddr string
	// GracePeriod is how long running transfers may finish after SIGTERM
	// before they are aborted.
	GracePeriod time.Duration
	// ProgressInterval bounds how often a transfer's progress is written.
	ProgressInterval time.Duration
	// RetryBackoff is the first pause between a transfer's tries.
	RetryBackoff time.Duration
	// Rsync is the rsync binary ("" for rsync from PATH).
	Rsync string
	// FullSyncInterval is how long a destination's record of its last
	// completed sync lets a source whose tree is unchanged skip rsync, or
	// send only what changed; past it a sync runs in full. 0: always in
	// full.
	FullSyncInterval time.Duration
	// Keepalive is how often each end of a transfer asks the other for a
	// sign of life; a connection silent for keepalive.Missed intervals (a
	// network cut) is closed, the try fails and is retried.
	Keepalive time.Duration
	// Transfer limits each transfer's own cgroup (memory, processes);
	// zero: no cgroups.
	Transfer cgroup.Limits
}

// Run runs the agent until ctx ends, then lets transfers finish for the
// grace period.
func Run(ctx context.Context, restConfig *rest.Config, cfg Config, log logr.Logger) error {
	if cfg.NodeName == "" || cfg.Namespace == "" {
		return errors.New("agent: the node name and Ferry's namespace are required")
	}
	if cfg.MaxTransfers < 1 {
		return fmt.Errorf("agent: max transfers must be at least 1, not %d", cfg.MaxTransfers)
	}
	if err := confine.CheckRsync(cfg.Rsync); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	s, err := scheme.New()
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Scheme: s, Logger: log,
		Metrics:                 metricsserver.Options{BindAddress: cfg.MetricsAddr},
		HealthProbeBindAddress:  cfg.ProbeAddr,
		GracefulShutdownTimeout: ptr.To(cfg.GracePeriod + 10*time.Second),
		// Only this node's assignments are watched and cached; everything
		// else is read when needed, uncached, so the agent holds no
		// cluster-wide lists.
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			// Key copies' metadata, not their keys: a change re-serves
			// the destinations that use it.
			secretMetadata(): {Namespaces: map[string]cache.Config{cfg.Namespace: {}}},
			&agentv1alpha1.MountAssignment{}: {
				Namespaces: map[string]cache.Config{cfg.Namespace: {}},
				Field:      fields.OneTermEqualSelector(agentv1alpha1.NodeNameField, cfg.NodeName),
			},
		}},
	})
	if err != nil {
		return fmt.Errorf("agent: create manager: %w", err)
	}
	scratch := filepath.Join(cfg.StateDir, "scratch")
	if err := os.MkdirAll(scratch, 0o700); err != nil {
		return fmt.Errorf("agent: state directory: %w", err)
	}
	opts := []endpoint.Option{endpoint.WithLogger(log.WithName("endpoint")),
		endpoint.WithRefusals(func(cause string) { refusedTotal.WithLabelValues(cfg.NodeName, cause).Inc() }),
		endpoint.WithFullSyncInterval(cfg.FullSyncInterval), endpoint.WithKeepalive(cfg.Keepalive)}
	var cgroups *cgroup.Pool
	if cfg.Transfer != (cgroup.Limits{}) {
		if cgroups, err = cgroup.New("ferry-transfers", cfg.Transfer); err != nil {
			return fmt.Errorf("agent: transfer limits: %w (zero limits run transfers without cgroups)", err)
		}
		opts = append(opts, endpoint.WithCgroups(cgroups))
	}
	if cfg.Rsync != "" {
		opts = append(opts, endpoint.WithRsync(cfg.Rsync))
	}
	aborted := make(chan struct{})
	abort := sync.OnceFunc(func() { close(aborted) })
	defer abort()
	r := &Reconciler{
		cfg: cfg, client: mgr.GetClient(), api: mgr.GetAPIReader(),
		publisher: csi.NewPublisher(csi.DefaultRoot(cfg.KubeletRoot), cfg.KubeletRoot, log.WithName("csi")),
		server:    endpoint.New(scratch, opts...), scratch: scratch, cgroups: cgroups,
		slots:  make(chan struct{}, cfg.MaxTransfers),
		events: mgr.GetEventRecorder("ferry-nodeagent"),
		log:    log, aborted: aborted, states: map[types.NamespacedName]*state{},
		records: records{ttl: cfg.FullSyncInterval},
	}
	defer r.publisher.Close()
	defer r.server.Close()
	if err := r.recover(ctx); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("agent: health check: %w", err)
	}
	// Ready once this node's assignments are in the cache.
	var synced atomic.Bool
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		synced.Store(mgr.GetCache().WaitForCacheSync(ctx))
		return nil
	})); err != nil {
		return fmt.Errorf("agent: add cache check: %w", err)
	}
	if err := mgr.AddReadyzCheck("readyz", func(*http.Request) error {
		if !synced.Load() {
			return errors.New("assignments not loaded yet")
		}
		return nil
	}); err != nil {
		return fmt.Errorf("agent: ready check: %w", err)
	}
	// Status is the agent's own output: only spec changes (and deletion,
	// which raises the generation too) are work. Hundreds of transfers'
	// progress writes would otherwise each cost a reconcile.
	if err := ctrl.NewControllerManagedBy(mgr).
		For(&agentv1alpha1.MountAssignment{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		// Rotated keys (the controller's copy follows the user's Secret)
		// take effect without a restart, and the old key stops working.
		WatchesMetadata(secretMetadata(), handler.EnqueueRequestsFromMapFunc(r.usersOfKeys)).
		WithOptions(controller.Options{MaxConcurrentReconciles: 8}).Complete(r); err != nil {
		return fmt.Errorf("agent: create reconciler: %w", err)
	}
	// At shutdown, transfers get the grace period to finish, then are
	// aborted and report so; the manager waits for this.
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		<-ctx.Done()
		done := make(chan struct{})
		go func() { r.runs.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(cfg.GracePeriod):
			log.Info("grace period over; aborting running transfers")
			abort()
			<-done
		}
		return nil
	})); err != nil {
		return fmt.Errorf("agent: add shutdown: %w", err)
	}
	log.Info("node agent starting", "node", cfg.NodeName, "namespace", cfg.Namespace, "maxTransfers", cfg.MaxTransfers)
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("agent: run: %w", err)
	}
	return nil
}

// secretMetadata is what the agent watches of key Secrets: metadata only.
func secretMetadata() *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	return m
}

// usersOfKeys are this node's destination assignments that serve with the
// keys of Secret s.
func (r *Reconciler) usersOfKeys(ctx context.Context, s client.Object) []reconcile.Request {
	list := &agentv1alpha1.MountAssignmentList{}
	if err := r.client.List(ctx, list, client.InNamespace(s.GetNamespace())); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "list assignments for a changed key Secret", "secret", s.GetName())
		return nil
	}
	var out []reconcile.Request
	for _, ma := range list.Items {
		if d := ma.Spec.Destination; d != nil && d.KeySecret.Name == s.GetName() {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&ma)})
		}
	}
	return out
}

// recover takes down, before anything else runs, every volume a previous
// run published that no assignment of this node wants any more.
func (r *Reconciler) recover(ctx context.Context) error {
	list := &agentv1alpha1.MountAssignmentList{}
	if err := r.api.List(ctx, list, client.InNamespace(r.cfg.Namespace),
		client.MatchingFields{agentv1alpha1.NodeNameField: r.cfg.NodeName}); err != nil {
		return fmt.Errorf("agent: list this node's assignments: %w", err)
	}
	wanted := map[string]bool{}
	for _, ma := range list.Items {
		if ma.DeletionTimestamp == nil {
			wanted[volumeName(client.ObjectKeyFromObject(&ma))] = true
		}
	}
	if err := r.publisher.Recover(ctx, func(name string) bool { return wanted[name] }); err != nil {
		return fmt.Errorf("agent: take down unwanted volumes: %w", err)
	}
	return nil
}
