package agent

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
)

// refusal is an assignment the agent will not carry out, however often it
// is asked: the reason is in the assignment, not in the weather.
type refusal struct{ reason string }

func (r *refusal) Error() string { return r.reason }

func refuse(format string, args ...any) error { return &refusal{reason: fmt.Sprintf(format, args...)} }

// isRefusal tells a refusal from a failure worth retrying.
func isRefusal(err error) bool {
	var r *refusal
	return errors.As(err, &r)
}

// checkOwner makes sure the assignment's volume is what it claims to be
// before anything is mounted: the PV is bound to the named claim in the
// owner's namespace, its CSI source is the one in the assignment (so a
// written assignment cannot smuggle in another volume handle), the owner
// CR exists with that UID and plays the assignment's role, and the CR owns
// the claim (an ownerReference to it, or the CR names the claim as its
// sourcePVC / destinationPVC). It returns the live PV, whose own secret
// references are the ones used.
func checkOwner(ctx context.Context, r client.Reader, ma *agentv1alpha1.MountAssignment) (*corev1.PersistentVolume, error) {
	spec, owner := ma.Spec.Volume, ma.Spec.Owner
	pv := &corev1.PersistentVolume{}
	if err := get(ctx, r, client.ObjectKey{Name: spec.PersistentVolumeName}, pv, "PersistentVolume"); err != nil {
		return nil, err
	}
	ref := pv.Spec.ClaimRef
	if ref == nil || ref.Namespace != owner.Namespace || ref.Name != spec.Claim {
		return nil, refuse("PersistentVolume %s is not bound to claim %s/%s", pv.Name, owner.Namespace, spec.Claim)
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != spec.Driver || pv.Spec.CSI.VolumeHandle != spec.VolumeHandle {
		return nil, refuse("PersistentVolume %s is not CSI volume %s of driver %s", pv.Name, spec.VolumeHandle, spec.Driver)
	}
	if pv.Spec.VolumeMode != nil && *pv.Spec.VolumeMode == corev1.PersistentVolumeBlock {
		return nil, refuse("PersistentVolume %s is a Block volume: Ferry replicates filesystem volumes only, so far", pv.Name)
	}
	pvc := &corev1.PersistentVolumeClaim{}
	if err := get(ctx, r, client.ObjectKey{Namespace: owner.Namespace, Name: spec.Claim}, pvc, "PersistentVolumeClaim"); err != nil {
		return nil, err
	}
	if pvc.Spec.VolumeName != pv.Name || (ref.UID != "" && ref.UID != pvc.UID) {
		return nil, refuse("claim %s/%s is not bound to PersistentVolume %s", owner.Namespace, spec.Claim, pv.Name)
	}
	var cr client.Object
	var named string
	switch owner.Kind {
	case "ReplicationSource":
		if ma.Spec.Source == nil {
			return nil, refuse("a ReplicationSource's assignment must have the source role")
		}
		rs := &volsyncv1alpha1.ReplicationSource{}
		cr = rs
		if err := get(ctx, r, client.ObjectKey{Namespace: owner.Namespace, Name: owner.Name}, rs, owner.Kind); err != nil {
			return nil, err
		}
		named = rs.Spec.SourcePVC
	case "ReplicationDestination":
		if ma.Spec.Destination == nil {
			return nil, refuse("a ReplicationDestination's assignment must have the destination role")
		}
		rd := &volsyncv1alpha1.ReplicationDestination{}
		cr = rd
		if err := get(ctx, r, client.ObjectKey{Namespace: owner.Namespace, Name: owner.Name}, rd, owner.Kind); err != nil {
			return nil, err
		}
		if rd.Spec.Rsync != nil && rd.Spec.Rsync.DestinationPVC != nil {
			named = *rd.Spec.Rsync.DestinationPVC
		}
	default:
		return nil, refuse("owner kind %q is not a Ferry CR", owner.Kind)
	}
	if string(cr.GetUID()) != owner.UID {
		return nil, refuse("%s %s/%s has uid %s, not %s: it was deleted and created again", owner.Kind, owner.Namespace, owner.Name, cr.GetUID(), owner.UID)
	}
	if named != spec.Claim && !ownedBy(pvc.OwnerReferences, cr.GetUID()) {
		return nil, refuse("claim %s/%s is neither owned nor named by %s %s", owner.Namespace, spec.Claim, owner.Kind, owner.Name)
	}
	return pv, nil
}

func ownedBy(refs []metav1.OwnerReference, uid types.UID) bool {
	for _, r := range refs {
		if r.UID == uid {
			return true
		}
	}
	return false
}

// get reads an object; a missing one is a refusal.
func get(ctx context.Context, r client.Reader, key client.ObjectKey, obj client.Object, kind string) error {
	err := r.Get(ctx, key, obj)
	if apierrors.IsNotFound(err) {
		return refuse("%s %s not found", kind, key)
	}
	if err != nil {
		return fmt.Errorf("get %s %s: %w", kind, key, err)
	}
	return nil
}
