// Package source reconciles ReplicationSources: at each trigger it makes the
// point-in-time copy of the source volume (a clone, a snapshot restored to a
// claim, or the live volume for Direct), hands it to a node's agent in a
// MountAssignment that pushes it to the destination's address, reports the
// transfer's progress and result in the status, and removes the copy.
package source

import (
	"context"
	"fmt"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/assign"
	"github.com/ferrysync/ferry/pkg/controller/cycle"
	"github.com/ferrysync/ferry/pkg/controller/keys"
	"github.com/ferrysync/ferry/pkg/controller/metrics"
	"github.com/ferrysync/ferry/pkg/controller/snapshot"
	"github.com/ferrysync/ferry/pkg/controller/takeover"
	"github.com/ferrysync/ferry/pkg/transfer/compression"
)

// Reconciler reconciles ReplicationSources.
type Reconciler struct {
	cycle.Shell
	// Assignments reads and writes the CRs' assignments, in
	// Ferry's namespace, where their key copies go too.
	Assignments assign.Store
	// Keys prepares the key Secrets, at most once per recheck interval
	// while the spec is unchanged.
	Keys *keys.Recent
	// Pods reads the cache of trimmed pods, indexed by claim
	// (assign.ClaimIndex): a Direct copy goes where its pod runs.
	Pods client.Reader
	// CopyTriggerTimeout is how long a sync waits for its claim's copy
	// trigger before it says it is late (it waits on).
	CopyTriggerTimeout time.Duration
}

// SetupWithManager registers the reconciler and what it watches.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).Named("replicationsource").
		For(&volsyncv1alpha1.ReplicationSource{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Owns(&corev1.PersistentVolumeClaim{}).
		Owns(snapshot.New()).
		Owns(&batchv1.Job{}).
		Watches(&agentv1alpha1.MountAssignment{}, assign.EnqueueOwner(assign.KindSource)).
		Complete(r)
}

// Reconcile brings one ReplicationSource about.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	rs := &volsyncv1alpha1.ReplicationSource{}
	w := &work{r: r, rs: rs, owner: assign.Owner{Kind: assign.KindSource, Object: rs}}
	return r.Run(ctx, req.NamespacedName, rs, &rs.Status.SyncStatus, w.finalize, w.reconcile)
}

// work is one reconcile of one ReplicationSource.
type work struct {
	r     *Reconciler
	rs    *volsyncv1alpha1.ReplicationSource
	owner assign.Owner
	ma    *agentv1alpha1.MountAssignment
	// mover is what VolSync's mover Job, left running, makes the sync
	// wait for ("" when there is none).
	mover string
}

func (w *work) metrics() metrics.Object {
	return metrics.Object{Name: w.rs.Name, Namespace: w.rs.Namespace, Role: metrics.RoleSource}
}

func (w *work) cr() cycle.CR {
	return cycle.CR{Object: w.rs, Status: &w.rs.Status.SyncStatus, Trigger: w.rs.Spec.Trigger, Paused: w.rs.Spec.Paused, Metrics: w.metrics()}
}

func (w *work) reconcile(ctx context.Context) (time.Duration, error) {
	rs, c := w.rs, w.r.Client
	spec := rs.Spec.Rsync
	if spec == nil {
		return 0, cycle.Invalidf("Ferry serves VolSync's rsync mover only (spec.rsync); this ReplicationSource uses another mover: run VolSync for it")
	}
	if spec.Address == nil || *spec.Address == "" {
		return 0, cycle.Invalidf("spec.rsync.address is required: set it to the destination's status.rsync.address")
	}
	if _, err := compression.Parse(rs.Annotations[volsyncv1alpha1.CompressionAnnotation]); err != nil {
		return 0, cycle.Invalidf("annotation %s: %v", volsyncv1alpha1.CompressionAnnotation, err)
	}
	if _, err := bandwidthLimit(rs); err != nil {
		return 0, err
	}
	if rs.Status.Rsync == nil {
		rs.Status.Rsync = &volsyncv1alpha1.ReplicationSourceRsyncStatus{}
	}
	published, err := w.r.Keys.Prepare(rs, func() (*string, error) {
		return keys.Prepare(ctx, c, rs, spec.SSHKeys, keys.Source, w.r.Assignments.KeyCopy(w.owner))
	})
	if err != nil {
		return 0, cycle.InvalidIf(err, keys.ErrInvalid)
	}
	rs.Status.Rsync.SSHKeys = published
	if err := c.Get(ctx, client.ObjectKey{Namespace: rs.Namespace, Name: rs.Spec.SourcePVC}, &corev1.PersistentVolumeClaim{}); err != nil {
		if client.IgnoreNotFound(err) == nil {
			return 0, cycle.Invalidf("spec.sourcePVC %q does not exist in namespace %s: create it or name an existing claim", rs.Spec.SourcePVC, rs.Namespace)
		}
		return 0, fmt.Errorf("get source claim: %w", err)
	}
	if w.ma, err = w.r.Assignments.Get(ctx, w.owner); err != nil {
		return 0, err
	}
	if w.mover, err = takeover.Mover(ctx, c, w.r.Events, rs, takeover.Source); err != nil {
		return 0, err
	}
	return cycle.Step(ctx, w.cr(), w, w.r.Options)
}

// finalize removes the assignment (the agent unmounts first), the copy's
// attachment, and the key copy in Ferry's namespace. The copy itself is
// owned by the CR.
func (w *work) finalize(ctx context.Context) (bool, error) {
	done, err := w.release(ctx)
	if err != nil || !done {
		return false, err
	}
	w.metrics().Forget()
	w.r.Keys.Forget(w.rs.UID)
	return true, keys.Delete(ctx, w.r.Client, w.r.Assignments.Namespace, w.owner.KeysName())
}

// release deletes the assignment and, once the agent has unmounted the
// copy, Ferry's attachment of it.
func (w *work) release(ctx context.Context) (bool, error) {
	done, err := w.r.Assignments.Release(ctx, w.owner)
	if err != nil || !done {
		return false, err
	}
	w.ma = nil
	if w.rs.Spec.Rsync != nil && w.rs.Spec.Rsync.CopyMethod.IsDirect() {
		// Detaching Ferry's attachment detaches the volume from the node,
		// also for a pod there that uses it now: leave it to Kubernetes.
		if node, err := assign.UsedOn(ctx, w.r.Pods, w.rs.Namespace, w.copyName()); err != nil || node != "" {
			return err == nil, err
		}
	}
	return true, assign.DetachClaim(ctx, w.r.Client, w.rs.Namespace, w.copyName())
}
