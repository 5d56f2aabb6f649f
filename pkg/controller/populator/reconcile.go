package populator

import (
	"context"
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
)

// Reconciler fills the claims that name a ReplicationDestination: it
// fetches what Decide looks at, asks it, and does the one thing it says.
type Reconciler struct {
	Client client.Client
	Events events.EventRecorder
}

// SetupWithManager registers the reconciler: claims that name a
// ReplicationDestination, the destinations (a first latestImage starts the
// wait's end) and the prime claims (owned by the claims they fill).
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &corev1.PersistentVolumeClaim{}, waitingIndex, waitingFor); err != nil {
		return fmt.Errorf("index claims by the destination they wait for: %w", err)
	}
	return ctrl.NewControllerManagedBy(mgr).Named("populator").
		For(&corev1.PersistentVolumeClaim{}, builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
			pvc, ok := o.(*corev1.PersistentVolumeClaim)
			return ok && Wants(pvc)
		}))).
		Owns(&corev1.PersistentVolumeClaim{}).
		Watches(&volsyncv1alpha1.ReplicationDestination{}, handler.EnqueueRequestsFromMapFunc(r.claimsOf)).
		Complete(r)
}

// waitingIndex indexes claims by the ReplicationDestination they wait to
// be filled from. Every status write of a destination is mapped to its
// waiting claims: a scan of the namespace's claims each time (a deep copy
// of every one) was most of the controller's CPU at 2,000 destinations.
const waitingIndex = "ferrysync.io/waiting-for"

// waitingFor is waitingIndex's value: the destination an unbound claim
// names in its dataSourceRef.
func waitingFor(o client.Object) []string {
	pvc, ok := o.(*corev1.PersistentVolumeClaim)
	if !ok || !Wants(pvc) || pvc.Spec.VolumeName != "" {
		return nil
	}
	return []string{pvc.Spec.DataSourceRef.Name}
}

// claimsOf are the claims of rd's namespace that wait to be filled from it.
func (r *Reconciler) claimsOf(ctx context.Context, rd client.Object) []reconcile.Request {
	list := &corev1.PersistentVolumeClaimList{}
	if err := r.Client.List(ctx, list, client.InNamespace(rd.GetNamespace()), client.MatchingFields{waitingIndex: rd.GetName()}); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "list claims for a ReplicationDestination", "replicationDestination", rd.GetName())
		return nil
	}
	out := make([]reconcile.Request, len(list.Items))
	for i := range list.Items {
		out[i] = reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])}
	}
	return out
}

// Reconcile takes one claim one step on.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	claim := &corev1.PersistentVolumeClaim{}
	if err := r.Client.Get(ctx, req.NamespacedName, claim); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !Wants(claim) || claim.DeletionTimestamp != nil {
		return ctrl.Result{}, nil
	}
	in, err := r.fetch(ctx, claim)
	if err != nil {
		return ctrl.Result{}, err
	}
	d := Decide(in)
	switch d.Action {
	case Wait:
		r.Events.Eventf(claim, nil, corev1.EventTypeNormal, EventWaiting, "Populate", "%s", d.Message)
	case CreatePrime:
		prime := Prime(claim, in.RD)
		if err := controllerutil.SetControllerReference(claim, prime, r.Client.Scheme()); err != nil {
			return ctrl.Result{}, fmt.Errorf("own prime claim %s: %w", prime.Name, err)
		}
		if err := r.Client.Create(ctx, prime); err != nil && !apierrors.IsAlreadyExists(err) {
			return ctrl.Result{}, fmt.Errorf("create prime claim %s: %w", prime.Name, err)
		}
		r.Events.Eventf(claim, nil, corev1.EventTypeNormal, EventWaiting, "Populate", "restoring %s of ReplicationDestination %s into claim %s",
			imageName(prime), in.RD.Name, prime.Name)
	case Rebind:
		raw, err := json.Marshal(map[string]any{"spec": map[string]any{"claimRef": ClaimRef(claim)}})
		if err != nil {
			return ctrl.Result{}, fmt.Errorf("encode claimRef: %w", err)
		}
		if err := r.Client.Patch(ctx, in.PrimePV, client.RawPatch("application/merge-patch+json", raw)); err != nil {
			return ctrl.Result{}, fmt.Errorf("hand volume %s to claim %s: %w", in.PrimePV.Name, claim.Name, err)
		}
	case DeletePrime:
		if in.Prime.DeletionTimestamp != nil {
			return ctrl.Result{}, nil // on its way; the claim was reported filled
		}
		// Deleted exactly once, as this pass saw it: a pass that reads an
		// older copy from the cache is refused, and says nothing again.
		err := r.Client.Delete(ctx, in.Prime, client.Preconditions{UID: &in.Prime.UID, ResourceVersion: &in.Prime.ResourceVersion})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return ctrl.Result{}, nil
		}
		if err != nil {
			return ctrl.Result{}, fmt.Errorf("delete prime claim %s: %w", in.Prime.Name, err)
		}
		r.Events.Eventf(claim, nil, corev1.EventTypeNormal, EventPopulated, "Populate", "filled from %s of ReplicationDestination %s",
			imageName(in.Prime), claim.Spec.DataSourceRef.Name)
	}
	return ctrl.Result{}, nil
}

// fetch reads what Decide looks at; what does not exist stays nil.
func (r *Reconciler) fetch(ctx context.Context, claim *corev1.PersistentVolumeClaim) (Input, error) {
	in := Input{Claim: claim}
	get := func(key client.ObjectKey, obj client.Object) (bool, error) {
		err := r.Client.Get(ctx, key, obj)
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("get %s: %w", key, err)
		}
		return true, nil
	}
	rd := &volsyncv1alpha1.ReplicationDestination{}
	if ok, err := get(client.ObjectKey{Namespace: claim.Namespace, Name: claim.Spec.DataSourceRef.Name}, rd); err != nil {
		return in, err
	} else if ok {
		in.RD = rd
	}
	if name := claim.Spec.StorageClassName; name != nil && *name != "" {
		class := &storagev1.StorageClass{}
		if ok, err := get(client.ObjectKey{Name: *name}, class); err != nil {
			return in, err
		} else if ok {
			in.Class = class
		}
	}
	prime := &corev1.PersistentVolumeClaim{}
	if ok, err := get(client.ObjectKey{Namespace: claim.Namespace, Name: PrimeName(claim)}, prime); err != nil {
		return in, err
	} else if ok {
		in.Prime = prime
	}
	if in.Prime != nil && in.Prime.Spec.VolumeName != "" {
		pv := &corev1.PersistentVolume{}
		if ok, err := get(client.ObjectKey{Name: in.Prime.Spec.VolumeName}, pv); err != nil {
			return in, err
		} else if ok {
			in.PrimePV = pv
		}
	}
	return in, nil
}

// Register makes the populator known where Kubernetes' VolumePopulator
// API is installed (the volume-data-source-validator then reports claims
// nobody fills); without it there is nothing to do.
func Register(ctx context.Context, c client.Client) error {
	vp := &unstructured.Unstructured{}
	vp.SetAPIVersion("populator.storage.k8s.io/v1beta1")
	vp.SetKind("VolumePopulator")
	vp.SetName("ferry-replicationdestination")
	vp.Object["sourceKind"] = map[string]any{"group": volsyncv1alpha1.GroupVersion.Group, "kind": "ReplicationDestination"}
	err := c.Create(ctx, vp)
	if meta.IsNoMatchError(err) || apierrors.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("register the VolumePopulator: %w", err)
	}
	return nil
}
