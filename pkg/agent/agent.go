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
//
// Files: agent.go wires the manager; reconcile.go is the dispatcher;
// node.go what both roles share (publisher, status writer, reads, labels);
// source.go the source runner and its rule (decideSource); destination.go
// the destination server; volumestate.go its volume's state around a sync
// (flushed, full, lost); syncs.go its pure rules (serveStatus, the
// endpoint-event tracker); owner.go the checks before anything is mounted.
package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
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
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	"github.com/ferrysync/ferry/pkg/api/scheme"
	"github.com/ferrysync/ferry/pkg/csi"
	"github.com/ferrysync/ferry/pkg/transfer/cgroup"
	"github.com/ferrysync/ferry/pkg/transfer/confine"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
	"github.com/ferrysync/ferry/pkg/transfer/stream"
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
	// CSIEndpoints names node plugin sockets outright (driver name →
	// socket path) for drivers the agent cannot find through kubelet's
	// plugin registration; others are found as kubelet finds them.
	CSIEndpoints map[string]string
	// CSICallTimeout bounds each call to a node plugin.
	CSICallTimeout time.Duration
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
	// MaxBandwidth caps what the node's source transfers send together, in
	// bytes per second on the wire (0: no cap); each ReplicationSource may
	// cap its own lower (its bandwidth-limit annotation).
	MaxBandwidth int64
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
	if err := cfg.check(); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	mgr, err := newManager(restConfig, cfg, log)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	scratch := filepath.Join(cfg.StateDir, "scratch")
	if err := os.MkdirAll(scratch, 0o700); err != nil {
		return fmt.Errorf("agent: state directory: %w", err)
	}
	aborted := make(chan struct{})
	abort := sync.OnceFunc(func() { close(aborted) })
	defer abort()
	// Closed in reverse: the endpoint (its receivers write into published
	// volumes) before the publisher.
	pub := csi.NewPublisher(cfg.KubeletRoot, log.WithName("csi"), csi.WithEndpoints(cfg.CSIEndpoints), csi.WithCallTimeout(cfg.CSICallTimeout))
	defer pub.Close()
	server, cgroups, err := newServer(cfg, scratch, log)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer server.Close()
	nodeSeries(cfg.NodeName)
	n := &node{cfg: cfg, cache: mgr.GetClient(), api: mgr.GetAPIReader(), publisher: pub,
		status: apiStatus{api: mgr.GetAPIReader(), writer: mgr.GetClient()},
		events: mgr.GetEventRecorder("ferry-nodeagent"), log: log}
	r := &Reconciler{node: n, writer: mgr.GetClient(),
		source: &sourceRunner{node: n, scratch: scratch, cgroups: cgroups, slots: make(chan struct{}, cfg.MaxTransfers), bandwidth: stream.NewLimiter(cfg.MaxBandwidth),
			aborted: aborted, records: records{ttl: cfg.FullSyncInterval}},
		destination: &destinationServer{node: n, server: server, ctx: ctrllog.IntoContext(context.WithoutCancel(ctx), log.WithName("destination")),
			aborted: aborted, states: objects[destinationState]{fresh: func(uid types.UID) *destinationState { return &destinationState{uid: uid} }}},
	}
	if err := recoverVolumes(ctx, mgr.GetAPIReader(), pub, cfg); err != nil {
		return err
	}
	if err := addChecks(mgr); err != nil {
		return fmt.Errorf("agent: %w", err)
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
	// At shutdown, transfers get the grace period to finish, on both
	// ends, then are aborted and report so; the manager waits for this.
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		<-ctx.Done()
		var wg sync.WaitGroup
		wg.Go(func() { r.source.drain(cfg.GracePeriod, abort) })
		wg.Go(func() { r.destination.drain(cfg.GracePeriod) })
		wg.Wait()
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

// check refuses settings the agent cannot run with.
func (cfg Config) check() error {
	if cfg.NodeName == "" || cfg.Namespace == "" {
		return errors.New("the node name and Ferry's namespace are required")
	}
	if cfg.MaxTransfers < 1 {
		return fmt.Errorf("max transfers must be at least 1, not %d", cfg.MaxTransfers)
	}
	return confine.CheckRsync(cfg.Rsync)
}

// newManager makes the agent's manager. Only this node's assignments are
// watched and cached; everything else is read when needed, uncached, so
// the agent holds no cluster-wide lists.
func newManager(restConfig *rest.Config, cfg Config, log logr.Logger) (manager.Manager, error) {
	s, err := scheme.New()
	if err != nil {
		return nil, err
	}
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Scheme: s, Logger: log,
		Metrics:                 metricsserver.Options{BindAddress: cfg.MetricsAddr},
		HealthProbeBindAddress:  cfg.ProbeAddr,
		GracefulShutdownTimeout: ptr.To(cfg.GracePeriod + 10*time.Second),
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
		return nil, fmt.Errorf("create manager: %w", err)
	}
	return mgr, nil
}

// newServer makes the node's ssh endpoint and the transfers' cgroup pool
// (nil when the transfer limits are zero).
func newServer(cfg Config, scratch string, log logr.Logger) (*endpoint.Server, *cgroup.Pool, error) {
	opts := []endpoint.Option{endpoint.WithLogger(log.WithName("endpoint")),
		endpoint.WithRefusals(func(cause string) { refusedTotal.WithLabelValues(cfg.NodeName, cause).Inc() }),
		endpoint.WithFullSyncInterval(cfg.FullSyncInterval), endpoint.WithKeepalive(cfg.Keepalive)}
	var cgroups *cgroup.Pool
	if cfg.Transfer != (cgroup.Limits{}) {
		var err error
		if cgroups, err = cgroup.New("ferry-transfers", cfg.Transfer); err != nil {
			return nil, nil, fmt.Errorf("transfer limits: %w (zero limits run transfers without cgroups)", err)
		}
		opts = append(opts, endpoint.WithCgroups(cgroups))
	}
	if cfg.Rsync != "" {
		opts = append(opts, endpoint.WithRsync(cfg.Rsync))
	}
	return endpoint.New(scratch, opts...), cgroups, nil
}

// addChecks adds /healthz and /readyz: ready once this node's assignments
// are in the cache.
func addChecks(mgr manager.Manager) error {
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	var synced atomic.Bool
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		synced.Store(mgr.GetCache().WaitForCacheSync(ctx))
		return nil
	})); err != nil {
		return fmt.Errorf("add cache check: %w", err)
	}
	if err := mgr.AddReadyzCheck("readyz", func(*http.Request) error {
		if !synced.Load() {
			return errors.New("assignments not loaded yet")
		}
		return nil
	}); err != nil {
		return fmt.Errorf("ready check: %w", err)
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
	if err := r.cache.List(ctx, list, client.InNamespace(s.GetNamespace())); err != nil {
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

// recoverVolumes takes down, before anything else runs, every volume a
// previous run published that no assignment of this node wants any more.
func recoverVolumes(ctx context.Context, api client.Reader, pub *csi.Publisher, cfg Config) error {
	list := &agentv1alpha1.MountAssignmentList{}
	if err := api.List(ctx, list, client.InNamespace(cfg.Namespace),
		client.MatchingFields{agentv1alpha1.NodeNameField: cfg.NodeName}); err != nil {
		return fmt.Errorf("agent: list this node's assignments: %w", err)
	}
	wanted := map[string]bool{}
	for _, ma := range list.Items {
		if ma.DeletionTimestamp == nil {
			wanted[volumeName(client.ObjectKeyFromObject(&ma))] = true
		}
	}
	if err := pub.Recover(ctx, func(name string) bool { return wanted[name] }); err != nil {
		return fmt.Errorf("agent: take down unwanted volumes: %w", err)
	}
	return nil
}
