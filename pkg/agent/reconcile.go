package agent

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
)

// The agent's permissions, the fewest it works with (make manifests writes
// them to deploy/nodeagent/rbac): its node's assignments and the key
// Secrets beside them in Ferry's namespace; single objects, by name, of
// what it checks before mounting. No Secret in another namespace: a PV's
// CSI node Secrets reach it as the controller's copies beside the
// assignment (MountAssignment.CSISecretCopy).
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
// short: it keeps the finalizer, hands the assignment to its role (a
// source's sync runs in a goroutine of its own, a destination's syncs
// arrive through the endpoint's events) and reports refusals and failures.
type Reconciler struct {
	*node
	writer      client.Client // cached reads of this node's assignments, and writes
	source      *sourceRunner
	destination *destinationServer
}

// Reconcile brings one assignment about.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	ma := &agentv1alpha1.MountAssignment{}
	err := r.writer.Get(ctx, req.NamespacedName, ma)
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
			if err := r.writer.Update(ctx, ma); err != nil && !apierrors.IsNotFound(err) {
				return ctrl.Result{}, fmt.Errorf("remove finalizer: %w", err)
			}
		}
		return ctrl.Result{}, nil
	}
	if controllerutil.AddFinalizer(ma, agentv1alpha1.Finalizer) {
		if err := r.writer.Update(ctx, ma); err != nil {
			return ctrl.Result{}, fmt.Errorf("add finalizer: %w", err)
		}
	}
	if ma.Status.Phase == agentv1alpha1.PhaseRefused && ma.Status.ObservedGeneration == ma.Generation {
		return ctrl.Result{}, nil
	}
	if ma.Spec.Source != nil {
		err = r.source.reconcile(ctx, ma)
	} else {
		err = r.destination.reconcile(ctx, ma)
	}
	if isRefusal(err) {
		return ctrl.Result{}, r.refuse(ctx, ma, err)
	}
	if err != nil {
		errorsTotal.WithLabelValues(r.labels(ma, agentv1alpha1.CauseFailed)...).Inc()
		if serr := r.status.update(ctx, req.NamespacedName, func(ma *agentv1alpha1.MountAssignment) {
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
	return r.status.update(ctx, key, func(ma *agentv1alpha1.MountAssignment) {
		ma.Status.Phase = agentv1alpha1.PhaseRefused
		ma.Status.MountPath, ma.Status.Endpoint, ma.Status.CurrentSync = "", nil, nil
		setReady(ma, false, agentv1alpha1.ReasonRefused, reason.Error())
	})
}

// release stops everything the agent does for an assignment: cancels its
// transfer and waits for it, stops serving it, unmounts its volume.
func (r *Reconciler) release(ctx context.Context, key types.NamespacedName) error {
	r.source.stop(key)
	r.destination.stop(key)
	if err := r.publisher.Unpublish(ctx, volumeName(key)); err != nil {
		return fmt.Errorf("unmount volume of %s: %w", key, err)
	}
	return nil
}
