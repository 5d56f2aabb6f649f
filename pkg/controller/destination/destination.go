// Package destination reconciles ReplicationDestinations: it keeps the
// destination volume, its key Secrets, its Service and EndpointSlice, and one
// MountAssignment that has a node's agent publish the volume and accept
// syncs on it; after each sync it cuts the VolumeSnapshot that becomes
// status.latestImage (copyMethod Snapshot), or names the volume itself
// (Direct), then lets the agent accept the next sync when the trigger says.
package destination

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/assign"
	"github.com/ferrysync/ferry/pkg/controller/cycle"
	"github.com/ferrysync/ferry/pkg/controller/keys"
	"github.com/ferrysync/ferry/pkg/controller/metrics"
	"github.com/ferrysync/ferry/pkg/controller/snapshot"
	"github.com/ferrysync/ferry/pkg/controller/takeover"
	"github.com/ferrysync/ferry/pkg/controller/trigger"
)

// Reconciler reconciles ReplicationDestinations.
type Reconciler struct {
	cycle.Shell
	// Assignments reads and writes the CRs' assignments, in
	// Ferry's namespace, where their key copies go too.
	Assignments assign.Store
	// Keys prepares the key Secrets, at most once per recheck interval
	// while the spec is unchanged.
	Keys *keys.Recent
	// Pods reads the cache of trimmed pods, indexed by claim
	// (assign.ClaimIndex).
	Pods client.Reader
}

// SetupWithManager registers the reconciler and what it watches.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).Named("replicationdestination").
		For(&volsyncv1alpha1.ReplicationDestination{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Owns(&corev1.PersistentVolumeClaim{}).
		Owns(&corev1.Service{}).
		Owns(&discoveryv1.EndpointSlice{}).
		Owns(snapshot.New()).
		Owns(&batchv1.Job{}).
		Watches(&agentv1alpha1.MountAssignment{}, assign.EnqueueOwner(assign.KindDestination)).
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(r.destinationsOf)).
		Complete(r)
}

// destinationsOf are the destinations in a pod's namespace whose claim the
// pod uses: a pod that starts (or stops) using one changes what Ferry may
// do with it.
func (r *Reconciler) destinationsOf(ctx context.Context, pod client.Object) []reconcile.Request {
	claims := assign.ClaimsOf(pod.(*corev1.Pod))
	if len(claims) == 0 {
		return nil
	}
	list := &volsyncv1alpha1.ReplicationDestinationList{}
	if err := r.Client.List(ctx, list, client.InNamespace(pod.GetNamespace())); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "list destinations for a pod", "pod", pod.GetName())
		return nil
	}
	var out []reconcile.Request
	for i := range list.Items {
		if slices.Contains(claims, claimName(&list.Items[i])) {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
	}
	return out
}

// Reconcile brings one ReplicationDestination about.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	rd := &volsyncv1alpha1.ReplicationDestination{}
	w := &work{r: r, rd: rd, owner: assign.Owner{Kind: assign.KindDestination, Object: rd}}
	return r.Run(ctx, req.NamespacedName, rd, &rd.Status.SyncStatus, w.finalize, w.reconcile)
}

// work is one reconcile of one ReplicationDestination.
type work struct {
	r     *Reconciler
	rd    *volsyncv1alpha1.ReplicationDestination
	owner assign.Owner
	// found as the reconcile goes
	pvc *corev1.PersistentVolumeClaim
	ma  *agentv1alpha1.MountAssignment
	// waiting says what the volume waits for before it can take a sync.
	waiting string
}

func (w *work) metrics() metrics.Object {
	return metrics.Object{Name: w.rd.Name, Namespace: w.rd.Namespace, Role: metrics.RoleDestination}
}

func (w *work) reconcile(ctx context.Context) (time.Duration, error) {
	rd, c := w.rd, w.r.Client
	spec := rd.Spec.Rsync
	if spec == nil {
		return 0, cycle.Invalidf("Ferry serves VolSync's rsync mover only (spec.rsync); this ReplicationDestination uses another mover: run VolSync for it")
	}
	if rd.Status.Rsync == nil {
		rd.Status.Rsync = &volsyncv1alpha1.ReplicationDestinationRsyncStatus{}
	}
	published, err := w.r.Keys.Prepare(rd, func() (*string, error) {
		return keys.Prepare(ctx, c, rd, spec.SSHKeys, keys.Destination, w.r.Assignments.KeyCopy(w.owner))
	})
	if err != nil {
		return 0, cycle.InvalidIf(err, keys.ErrInvalid)
	}
	rd.Status.Rsync.SSHKeys = published
	if w.ma, err = w.r.Assignments.Get(ctx, w.owner); err != nil {
		return 0, err
	}
	pv, err := w.volume(ctx)
	if err != nil {
		return 0, err
	}
	users, err := assign.PodsUsing(ctx, w.r.Pods, rd.Namespace, claimName(rd))
	if err != nil {
		return 0, err
	}
	mover, err := takeover.Mover(ctx, c, w.r.Events, rd, takeover.Destination)
	if err != nil {
		return 0, err
	}
	facts := volumeFacts{bound: pv != nil, mover: mover, paused: rd.Spec.Paused, transferring: transferring(w.ma), users: len(users),
		droppingClaim: dropsClaim(rd) && trigger.PhaseOf(&rd.Status.SyncStatus) == trigger.CleaningUp}
	switch decideVolume(facts) {
	case volumeYield:
		w.waiting = mover
	case volumePause:
		if done, err := w.release(ctx, pv.Name); err != nil || !done {
			return w.r.Poll, err
		}
		cycle.Pause(w.cr())
	case volumeLend:
		// Let go of it (unpublished, detached) before the pod needs it.
		if done, err := w.release(ctx, pv.Name); err != nil || !done {
			return w.r.Poll, err
		}
		w.waiting = fmt.Sprintf("claim %s is in use by pod %s: Ferry let go of it, and syncs wait until the pod is gone",
			claimName(rd), strings.Join(podNames(users), ", "))
	case volumeAssign:
		if err := w.assign(ctx, pv); err != nil {
			return 0, err
		}
	}
	svc, err := w.service(ctx)
	if err != nil {
		return 0, err
	}
	w.setAddress(svc)
	if err := w.endpoints(ctx, svc); err != nil {
		return 0, err
	}
	return cycle.Step(ctx, w.cr(), w, w.r.Options)
}

func (w *work) cr() cycle.CR {
	return cycle.CR{Object: w.rd, Status: &w.rd.Status.SyncStatus, Trigger: w.rd.Spec.Trigger, Paused: w.rd.Spec.Paused, Metrics: w.metrics()}
}

// assign places the volume and writes the assignment for that node,
// attaching the volume first where the driver requires it.
func (w *work) assign(ctx context.Context, pv *corev1.PersistentVolume) error {
	c := w.r.Client
	privileged, err := assign.Privileged(ctx, c, w.rd.Namespace)
	if err != nil {
		return err
	}
	runAs, err := assign.RunAs(w.rd.Spec.Rsync.MoverSecurityContext, privileged)
	if err != nil {
		return cycle.Invalid(err)
	}
	var prefer string
	if w.ma != nil {
		prefer = w.ma.Spec.NodeName
	}
	vol, node, err := assign.Locate(ctx, c, pv, w.pvc.Name, string(w.rd.UID), prefer)
	if err != nil {
		return cycle.InvalidIf(err, assign.ErrUnplaceable)
	}
	if w.ma != nil && w.ma.Spec.NodeName != node {
		// Moving: the old node unmounts before the volume is attached
		// elsewhere.
		if done, err := w.release(ctx, pv.Name); err != nil || !done {
			return err
		}
		w.ma = nil
	}
	attachment, attached, err := assign.Attach(ctx, c, vol, node)
	if err != nil {
		return err
	}
	if !attached {
		w.waiting = fmt.Sprintf("waiting for the volume to attach to node %s", node)
		return nil // the attacher's update of the VolumeAttachment is not watched: Poll
	}
	vol.Attachment = attachment
	spec := agentv1alpha1.MountAssignmentSpec{NodeName: node, Owner: w.owner.Ref(), Volume: vol, SyncGeneration: 1,
		Limits: assign.Limits(w.rd.Spec.Rsync.MoverResources),
		Destination: &agentv1alpha1.DestinationRole{
			KeySecret:  agentv1alpha1.SecretReference{Namespace: w.r.Assignments.Namespace, Name: w.owner.KeysName()},
			Privileged: privileged, RunAs: runAs, InPlace: !w.rd.Spec.Rsync.CopyMethod.IsDirect()}}
	w.ma, err = w.r.Assignments.Ensure(ctx, w.owner, spec)
	return err
}

// release deletes the assignment and, once the agent has unmounted the
// volume, detaches it.
func (w *work) release(ctx context.Context, pv string) (bool, error) {
	done, err := w.r.Assignments.Release(ctx, w.owner)
	if err != nil || !done {
		return false, err
	}
	w.ma = nil
	return true, assign.Detach(ctx, w.r.Client, pv)
}

// finalize removes what lives outside the CR's namespace: the assignment
// (the volume unmounted and detached first) and the key copy.
func (w *work) finalize(ctx context.Context) (bool, error) {
	done, err := w.r.Assignments.Release(ctx, w.owner)
	if err != nil || !done {
		return false, err
	}
	// The claim is still there: it goes with the CR, which the finalizer
	// keeps.
	if err := assign.DetachClaim(ctx, w.r.Client, w.rd.Namespace, claimName(w.rd)); err != nil {
		return false, err
	}
	w.metrics().Forget()
	w.r.Keys.Forget(w.rd.UID)
	return true, keys.Delete(ctx, w.r.Client, w.r.Assignments.Namespace, w.owner.KeysName())
}

func podNames(pods []corev1.Pod) []string {
	out := make([]string, len(pods))
	for i := range pods {
		out[i] = pods[i].Name
	}
	return out
}
