// Package controller is Ferry's central controller: it serves VolSync's
// ReplicationSource and ReplicationDestination (spec.rsync) by writing
// MountAssignments that the node agents carry out, with no mover pod. Run
// builds the manager (leader election, metrics, health) and the two
// reconcilers (packages source and destination), which share the sync
// cycle (package cycle) and its trigger logic (package trigger).
package controller

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	"github.com/ferrysync/ferry/pkg/api/scheme"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/assign"
	"github.com/ferrysync/ferry/pkg/controller/cycle"
	"github.com/ferrysync/ferry/pkg/controller/destination"
	"github.com/ferrysync/ferry/pkg/controller/fresh"
	"github.com/ferrysync/ferry/pkg/controller/keys"
	"github.com/ferrysync/ferry/pkg/controller/populator"
	"github.com/ferrysync/ferry/pkg/controller/source"
	"github.com/ferrysync/ferry/pkg/controller/takeover"
)

// The controller's permissions (make manifests writes them to
// deploy/controller/rbac). Secrets everywhere: VolSync's key Secrets live
// beside the CRs; no Secret is cached, each is read by name.
//
// +kubebuilder:rbac:groups=volsync.backube,resources=replicationsources;replicationdestinations,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=volsync.backube,resources=replicationsources/status;replicationdestinations/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=volsync.backube,resources=replicationsources/finalizers;replicationdestinations/finalizers,verbs=update
// +kubebuilder:rbac:groups=agent.ferrysync.io,namespace=ferry-system,resources=mountassignments,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",namespace=ferry-system,resources=secrets,verbs=get;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;create;update;patch
// +kubebuilder:rbac:groups="",resources=persistentvolumeclaims,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=persistentvolumes,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=populator.storage.k8s.io,resources=volumepopulators,verbs=create
// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch;create;update;patch
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=pods,verbs=list;watch
// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups="",resources=nodes;namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=storage.k8s.io,resources=csinodes;csidrivers;storageclasses,verbs=get;list;watch
// +kubebuilder:rbac:groups=storage.k8s.io,resources=volumeattachments,verbs=get;list;watch;create;update;delete
// +kubebuilder:rbac:groups=snapshot.storage.k8s.io,resources=volumesnapshots,verbs=get;list;watch;create;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=ferry-system,resources=leases,verbs=get;create;update
// Leader election records its LeaderElection Events through core/v1, in
// the lease's namespace only (found by the first install on real nodes).
// +kubebuilder:rbac:groups="",namespace=ferry-system,resources=events,verbs=create;patch

// Config is the controller's settings, from its command line.
type Config struct {
	// Namespace is Ferry's namespace: assignments and key copies live
	// there, and the agents read nothing outside it.
	Namespace string
	// MetricsAddr and ProbeAddr are where /metrics and /healthz, /readyz
	// listen; PprofAddr, when set, serves Go's /debug/pprof (profiles of
	// a controller at scale).
	MetricsAddr, ProbeAddr, PprofAddr string
	// LeaderElect makes replicas elect one active reconciler.
	LeaderElect bool
	// RetryAfter paces retries of failed syncs that no schedule paces.
	RetryAfter time.Duration
	// Poll is how often waits that no watch covers are looked at
	// (attachments, agent progress between writes).
	Poll time.Duration
	// Recheck is how often a CR whose input the user must fix is looked at
	// again.
	Recheck time.Duration
	// KeyRefresh is how long a CR's prepared keys hold while its spec is
	// unchanged: how soon a user's replaced key Secret reaches the agent.
	KeyRefresh time.Duration
	// Workers is how many CRs of each kind are reconciled at once (never
	// one CR twice at once): a schedule's minute starts hundreds of syncs
	// together, and one worker would take them in turn.
	Workers int
	// CopyTriggerTimeout is how long a sync waits for its claim's copy
	// trigger before it reports being late (it waits on).
	CopyTriggerTimeout time.Duration
}

// Run runs the controller until ctx ends.
func Run(ctx context.Context, restConfig *rest.Config, cfg Config, log logr.Logger) error {
	if cfg.Namespace == "" {
		return errors.New("controller: Ferry's namespace is required")
	}
	s, err := scheme.New()
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Scheme: s, Logger: log,
		Metrics:                 metricsserver.Options{BindAddress: cfg.MetricsAddr},
		HealthProbeBindAddress:  cfg.ProbeAddr,
		PprofBindAddress:        cfg.PprofAddr,
		LeaderElection:          cfg.LeaderElect,
		LeaderElectionID:        "controller.ferrysync.io",
		LeaderElectionNamespace: cfg.Namespace,
		Controller:              ctrlconfig.Controller{MaxConcurrentReconciles: cfg.Workers},
		// Assignments only in Ferry's namespace; Secrets never cached
		// (read by name); Pods cached trimmed (assign.TrimPod) and read
		// only through the cache's claim index, never the client, so no
		// read mistakes a trimmed pod for a whole one.
		// Every cached object without its managedFields (never read; much
		// of each object's size: the cache was most of the controller's
		// memory at scale).
		Cache: cache.Options{DefaultTransform: cache.TransformStripManagedFields(), ByObject: map[client.Object]cache.ByObject{
			&agentv1alpha1.MountAssignment{}: {Namespaces: map[string]cache.Config{cfg.Namespace: {}}},
			// Pods trimmed to name, node, phase and claims: a pod that
			// starts using a destination's claim makes Ferry let go of it.
			&corev1.Pod{}: {Transform: assign.TrimPod},
			// Jobs: only VolSync's, whose movers Ferry waits out and
			// removes when it takes over (package takeover).
			&batchv1.Job{}: {Label: labels.SelectorFromSet(labels.Set{takeover.CreatedByLabel: takeover.CreatedByVolSync})},
		}},
		Client: client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}, &corev1.Pod{}}}},
	})
	if err != nil {
		return fmt.Errorf("controller: create manager: %w", err)
	}
	// The CRs and assignments drive each step: read from the cache, but
	// never older than the controller's own last write (package fresh).
	c := fresh.New(mgr.GetClient(), mgr.GetAPIReader(),
		&volsyncv1alpha1.ReplicationSource{}, &volsyncv1alpha1.ReplicationDestination{}, &agentv1alpha1.MountAssignment{})
	shell := cycle.Shell{Client: c, Recheck: cfg.Recheck, Options: cycle.Options{
		Now: time.Now, RetryAfter: cfg.RetryAfter, Poll: cfg.Poll, Resync: cfg.Recheck, Events: mgr.GetEventRecorder("ferry-controller")}}
	assignments := assign.Store{Client: c, Namespace: cfg.Namespace}
	prepared := &keys.Recent{Every: cfg.KeyRefresh, Now: time.Now}
	if err := assign.IndexPodsByClaim(ctx, mgr.GetFieldIndexer()); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	if err := (&destination.Reconciler{Shell: shell, Assignments: assignments, Keys: prepared, Pods: mgr.GetCache()}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("controller: ReplicationDestination reconciler: %w", err)
	}
	if err := (&source.Reconciler{Shell: shell, Assignments: assignments, Keys: prepared, Pods: mgr.GetCache(), CopyTriggerTimeout: cfg.CopyTriggerTimeout}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("controller: ReplicationSource reconciler: %w", err)
	}
	if err := (&populator.Reconciler{Client: mgr.GetClient(), Events: shell.Events}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("controller: volume populator: %w", err)
	}
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		return populator.Register(ctx, mgr.GetClient())
	})); err != nil {
		return fmt.Errorf("controller: register the volume populator: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("controller: health check: %w", err)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return fmt.Errorf("controller: ready check: %w", err)
	}
	log.Info("controller starting", "namespace", cfg.Namespace)
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("controller: run: %w", err)
	}
	return nil
}
