package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	"github.com/ferrysync/ferry/pkg/csi"
	"github.com/ferrysync/ferry/pkg/mount"
	"github.com/ferrysync/ferry/pkg/transfer/cgroup"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
)

// The agent's permissions, the fewest it works with (make manifests writes
// them to deploy/nodeagent/rbac): its node's assignments and the key
// Secrets beside them in Ferry's namespace; single objects, by name, of
// what it checks before mounting. Secrets in other namespaces (a PV's
// nodeStageSecretRef) only with the optional role in
// deploy/nodeagent/csi-secrets.
//
// +kubebuilder:rbac:groups=agent.ferrysync.io,namespace=ferry-system,resources=mountassignments,verbs=get;list;watch;update
// +kubebuilder:rbac:groups=agent.ferrysync.io,namespace=ferry-system,resources=mountassignments/status,verbs=get;update
// +kubebuilder:rbac:groups="",namespace=ferry-system,resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=persistentvolumes,verbs=get
// +kubebuilder:rbac:groups="",resources=persistentvolumeclaims,verbs=get
// +kubebuilder:rbac:groups=volsync.backube,resources=replicationsources;replicationdestinations,verbs=get
// +kubebuilder:rbac:groups=storage.k8s.io,resources=csidrivers,verbs=get
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get
// +kubebuilder:rbac:groups=events.k8s.io,namespace=ferry-system,resources=events,verbs=create;patch

// Reconciler carries out this node's MountAssignments. Reconcile itself is
// short: it checks, publishes and registers; a source's transfer runs in a
// goroutine of its own, a destination's syncs arrive through the endpoint's
// events, and both report through status.
type Reconciler struct {
	cfg       Config
	client    client.Client // cached: this node's assignments
	api       client.Reader // uncached: PVs, claims, CRs, Secrets, fresh status
	publisher *csi.Publisher
	server    *endpoint.Server
	scratch   string        // where confinements mount their roots
	cgroups   *cgroup.Pool  // each transfer's limits; nil: none
	slots     chan struct{} // one per concurrent transfer
	events    events.EventRecorder
	log       logr.Logger

	// aborted is closed a grace period after shutdown begins: running
	// transfers end then.
	aborted <-chan struct{}
	runs    sync.WaitGroup

	mu     sync.Mutex
	states map[types.NamespacedName]*state
	// records are what each source's last completed sync sent.
	records records
}

// state is what the agent knows of an assignment beyond its status: what is
// running now in this process. It belongs to one object (uid): an
// assignment deleted and created again under the same name starts afresh,
// and release drops it.
type state struct {
	uid types.UID
	mu  sync.Mutex
	// source: the generation running (0: none), its cancel and end, and
	// the last generation this process finished.
	running  int64
	cancel   context.CancelFunc
	done     chan struct{}
	finished int64
	// destination: what is registered with the endpoint, and the sync
	// under way.
	served   string
	path     string
	endpoint *agentv1alpha1.Endpoint
	live     int
	start    time.Time
	received int64
	sent     int64
	// unreported is the end of a sync that could not be written to the
	// status when it happened (the apiserver away): the volume stays held
	// and the end is written again until it lands (redelivering), for the
	// controller makes the image only from the status.
	unreported   *agentv1alpha1.SyncResult
	redelivering bool
}

// state is the state of this very object, new if the name last belonged to
// another.
func (r *Reconciler) state(ma *agentv1alpha1.MountAssignment) *state {
	key := client.ObjectKeyFromObject(ma)
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.states[key]
	if s == nil || s.uid != ma.UID {
		s = &state{uid: ma.UID}
		r.states[key] = s
	}
	return s
}

// Reconcile brings one assignment about.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	ma := &agentv1alpha1.MountAssignment{}
	err := r.client.Get(ctx, req.NamespacedName, ma)
	if apierrors.IsNotFound(err) {
		return ctrl.Result{}, r.release(ctx, req.NamespacedName)
	}
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("get assignment: %w", err)
	}
	if ma.Spec.NodeName != r.cfg.NodeName {
		return ctrl.Result{}, nil // the cache selects by node; never act on another's
	}
	if ma.DeletionTimestamp != nil {
		if err := r.release(ctx, req.NamespacedName); err != nil {
			return ctrl.Result{}, err
		}
		if controllerutil.RemoveFinalizer(ma, agentv1alpha1.Finalizer) {
			if err := r.client.Update(ctx, ma); err != nil && !apierrors.IsNotFound(err) {
				return ctrl.Result{}, fmt.Errorf("remove finalizer: %w", err)
			}
		}
		return ctrl.Result{}, nil
	}
	if controllerutil.AddFinalizer(ma, agentv1alpha1.Finalizer) {
		if err := r.client.Update(ctx, ma); err != nil {
			return ctrl.Result{}, fmt.Errorf("add finalizer: %w", err)
		}
	}
	if ma.Status.Phase == agentv1alpha1.PhaseRefused && ma.Status.ObservedGeneration == ma.Generation {
		return ctrl.Result{}, nil
	}
	if ma.Spec.Source != nil {
		err = r.reconcileSource(ctx, ma)
	} else {
		err = r.reconcileDestination(ctx, ma)
	}
	if isRefusal(err) {
		return ctrl.Result{}, r.refuse(ctx, ma, err)
	}
	if err != nil {
		errorsTotal.WithLabelValues(r.labels(ma, agentv1alpha1.CauseFailed)...).Inc()
		if serr := r.updateStatus(req.NamespacedName, func(ma *agentv1alpha1.MountAssignment) {
			if ma.Status.Phase != agentv1alpha1.PhaseTransferring {
				ma.Status.Phase = agentv1alpha1.PhaseFailed
			}
			setReady(ma, false, agentv1alpha1.ReasonFailed, err.Error())
		}); serr != nil {
			return ctrl.Result{}, errors.Join(err, serr)
		}
	}
	return ctrl.Result{}, err
}

// refuse reports an assignment the agent will not carry out and makes sure
// nothing of it is mounted or served.
func (r *Reconciler) refuse(ctx context.Context, ma *agentv1alpha1.MountAssignment, reason error) error {
	key := client.ObjectKeyFromObject(ma)
	log.FromContext(ctx).Info("refused assignment", "reason", reason.Error())
	r.events.Eventf(ma, nil, corev1.EventTypeWarning, agentv1alpha1.ReasonRefused, "Mount", "%s", reason.Error())
	errorsTotal.WithLabelValues(r.labels(ma, agentv1alpha1.CauseRefused)...).Inc()
	if err := r.release(ctx, key); err != nil {
		return err
	}
	return r.updateStatus(key, func(ma *agentv1alpha1.MountAssignment) {
		ma.Status.Phase = agentv1alpha1.PhaseRefused
		ma.Status.MountPath, ma.Status.Endpoint, ma.Status.CurrentSync = "", nil, nil
		setReady(ma, false, agentv1alpha1.ReasonRefused, reason.Error())
	})
}

// release stops everything the agent does for an assignment: cancels its
// transfer and waits for it, stops serving it, unmounts its volume.
func (r *Reconciler) release(ctx context.Context, key types.NamespacedName) error {
	r.mu.Lock()
	s := r.states[key]
	r.mu.Unlock()
	if s != nil {
		s.mu.Lock()
		cancel, done := s.cancel, s.done
		s.mu.Unlock()
		if cancel != nil {
			cancel()
			<-done
		}
	}
	r.server.Remove(key.String())
	r.mu.Lock()
	if r.states[key] == s {
		delete(r.states, key)
	}
	r.mu.Unlock()
	if err := r.publisher.Unpublish(ctx, volumeName(key)); err != nil {
		return fmt.Errorf("unmount volume of %s: %w", key, err)
	}
	return nil
}

// volumeName is the assignment's directory under the publisher's root:
// assignment names are DNS subdomains and unique in the namespace.
func volumeName(key types.NamespacedName) string { return key.Name }

// volumeFor builds what to publish from the live PV (its own secret
// references, resolved here) and the assignment (role, attachment).
func (r *Reconciler) volumeFor(ctx context.Context, ma *agentv1alpha1.MountAssignment, pv *corev1.PersistentVolume, readOnly bool) (csi.Volume, error) {
	src := pv.Spec.CSI
	v := csi.FromPersistentVolume(pv)
	v.ReadOnly = readOnly
	if a := ma.Spec.Volume.Attachment; a != nil {
		v.PublishContext, v.Attachment = a.Metadata, a.UID
	}
	var err error
	if v.StageSecrets, err = r.secretData(ctx, src.NodeStageSecretRef); err != nil {
		return v, err
	}
	if v.PublishSecrets, err = r.secretData(ctx, src.NodePublishSecretRef); err != nil {
		return v, err
	}
	if ma.Spec.Volume.ReuseKubeletMount && readOnly {
		path, err := mount.KubeletMount(r.cfg.KubeletRoot, pv.Name, v.Block)
		if err == nil {
			v.Reuse = path
		} else if !errors.Is(err, mount.ErrNoKubeletMount) {
			return v, err
		}
	}
	return v, nil
}

func (r *Reconciler) secretData(ctx context.Context, ref *corev1.SecretReference) (map[string]string, error) {
	if ref == nil {
		return nil, nil
	}
	sec := &corev1.Secret{}
	if err := r.api.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, sec); err != nil {
		return nil, fmt.Errorf("read CSI secret %s/%s: %w", ref.Namespace, ref.Name, err)
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
func readKeys[T any](ctx context.Context, r *Reconciler, ref agentv1alpha1.SecretReference, parse func(map[string][]byte) (T, error)) (T, error) {
	var none T
	if ref.Namespace != r.cfg.Namespace {
		return none, refuse("key Secret %s/%s is not in Ferry's namespace %s", ref.Namespace, ref.Name, r.cfg.Namespace)
	}
	sec := &corev1.Secret{}
	if err := r.api.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, sec); err != nil {
		return none, fmt.Errorf("read key Secret %s/%s: %w", ref.Namespace, ref.Name, err)
	}
	keys, err := parse(sec.Data)
	if err != nil {
		return none, refuse("key Secret %s/%s: %v", ref.Namespace, ref.Name, err)
	}
	return keys, nil
}

// publish publishes and records how long it took.
func (r *Reconciler) publish(ctx context.Context, key types.NamespacedName, v csi.Volume, role string) (string, error) {
	start := time.Now()
	path, err := r.publisher.Publish(ctx, volumeName(key), v)
	if err != nil {
		return "", err
	}
	publishSeconds.WithLabelValues(r.cfg.NodeName, role).Observe(time.Since(start).Seconds())
	return path, nil
}

// labels are the per-CR metric labels plus extra values.
func (r *Reconciler) labels(ma *agentv1alpha1.MountAssignment, extra ...string) []string {
	return append([]string{r.cfg.NodeName, ma.Spec.Owner.Namespace, ma.Spec.Owner.Name, role(ma)}, extra...)
}

func role(ma *agentv1alpha1.MountAssignment) string {
	if ma.Spec.Source != nil {
		return "source"
	}
	return "destination"
}
