package cycle

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/assign"
)

// EventInvalid is the event reason for a spec or a missing object the user
// must fix; the note says what.
const EventInvalid = "ReconcileFailed"

// Finalizer keeps a CR until what the controller made for it outside its
// namespace (its assignment, its key copy in Ferry's namespace) is gone:
// owner references cannot cross namespaces.
const Finalizer = "ferrysync.io/cleanup"

// conflictRetry is how soon a reconcile that met a write conflict runs
// again.
const conflictRetry = 100 * time.Millisecond

// Shell is what both kinds' reconcilers share around their own work: the
// finalizer, the Reconciled condition, one status write, when to look
// again.
type Shell struct {
	// Client reads and writes. Its reads of the CR must never be older
	// than its own last write (package fresh): the cycle's phase is in the
	// status, and an older copy would replay a step.
	Client client.Client
	Options
	// Recheck is when to look again after an error the user must fix, for
	// objects no watch covers (Secrets, classes).
	Recheck time.Duration
}

// unprivilegedNote tells the user, in the Reconciled condition, what an
// unannotated namespace costs and how to change it.
func (s Shell) unprivilegedNote(ctx context.Context, namespace string) string {
	if privileged, err := assign.Privileged(ctx, s.Client, namespace); err != nil || privileged {
		return ""
	}
	return fmt.Sprintf("transfers run unprivileged: file owners, setuid bits and device files are not kept; to keep them, annotate namespace %s with %s=\"true\"",
		namespace, volsyncv1alpha1.PrivilegedMoversAnnotation)
}

// Run reconciles the CR key into obj (st is obj's status): it reads it (no
// older than this controller's last write of it, so no step the last pass
// took is replayed), finalizes it when it is being deleted or
// runs body, then records the outcome in the Reconciled condition and
// writes the status if it changed.
func (s Shell) Run(ctx context.Context, key client.ObjectKey, obj client.Object, st *volsyncv1alpha1.SyncStatus,
	finalize func(context.Context) (bool, error), body func(context.Context) (time.Duration, error)) (ctrl.Result, error) {
	if err := s.Client.Get(ctx, key, obj); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !obj.GetDeletionTimestamp().IsZero() {
		done, err := finalize(ctx)
		if err != nil || !done {
			return ctrl.Result{RequeueAfter: s.Poll}, err
		}
		if controllerutil.RemoveFinalizer(obj, Finalizer) {
			if err := s.Client.Update(ctx, obj); err != nil {
				return ctrl.Result{}, client.IgnoreNotFound(fmt.Errorf("remove finalizer: %w", err))
			}
		}
		return ctrl.Result{}, nil
	}
	if controllerutil.AddFinalizer(obj, Finalizer) {
		if err := s.Client.Update(ctx, obj); err != nil {
			return ctrl.Result{}, fmt.Errorf("add finalizer: %w", err)
		}
	}
	orig := obj.DeepCopyObject().(client.Object)
	after, err := body(ctx)
	if !Transient(err) {
		Reconciled(obj, st, err, s.unprivilegedNote(ctx, obj.GetNamespace()))
	}
	if IsInvalid(err) {
		s.Events.Eventf(obj, nil, corev1.EventTypeWarning, EventInvalid, "Reconcile", "%s", err.Error())
		after, err = s.Recheck, nil
	}
	// Optimistic: a status written from what has since changed is refused
	// (and the reconcile runs again on fresh data). Written only when it
	// changed: the lock alone (resourceVersion) is in every patch.
	patch := client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})
	if data, perr := client.MergeFrom(orig).Data(obj); perr != nil || string(data) != "{}" {
		if perr := s.Client.Status().Patch(ctx, obj, patch); perr != nil {
			if !apierrors.IsConflict(perr) {
				return ctrl.Result{}, client.IgnoreNotFound(fmt.Errorf("write status: %w", perr))
			}
			if err == nil { // a body's own error is the one to report
				err = perr
			}
		}
	}
	if apierrors.IsConflict(err) {
		// Expected: someone wrote the object since it was read. Again at
		// once, on fresh data: not an error to log, nor to back off from.
		log.FromContext(ctx).V(1).Info("conflict; reconciling again", "error", err.Error())
		return ctrl.Result{RequeueAfter: conflictRetry}, nil
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: after}, nil
}
