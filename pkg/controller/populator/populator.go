// Package populator restores a volume from a ReplicationDestination with
// one claim, as VolSync's volume populator does: a PersistentVolumeClaim
// whose dataSourceRef names a ReplicationDestination (apiGroup
// volsync.backube) is filled from its latestImage, waiting for the first
// image if there is none yet. As Kubernetes' volume populators do, it
// restores the image into a "prime" claim beside the user's, then hands the
// prime claim's volume to the user's claim (the volume's claimRef) and
// deletes the prime claim. Users bootstrap whole clusters this way, with
// VolSync's restore manifests unchanged.
package populator

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/utils/ptr"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
)

const (
	// LabelFor marks a prime claim with the UID of the claim it fills.
	LabelFor = "ferrysync.io/populate-for"
	// primePrefix names a prime claim: vs-prime-<uid of the user's claim>.
	primePrefix = "vs-prime-"
	// annSelectedNode is the scheduler's choice of node for a claim of a
	// WaitForFirstConsumer class; the prime claim is provisioned there.
	annSelectedNode = "volume.kubernetes.io/selected-node"

	// EventWaiting and EventPopulated are the reasons of the events on the
	// user's claim.
	EventWaiting   = "PopulateWaiting"
	EventPopulated = "Populated"
)

// Wants says whether a claim asks to be filled from a ReplicationDestination.
func Wants(pvc *corev1.PersistentVolumeClaim) bool {
	ref := pvc.Spec.DataSourceRef
	return ref != nil && ptr.Deref(ref.APIGroup, "") == volsyncv1alpha1.GroupVersion.Group && ref.Kind == "ReplicationDestination"
}

// PrimeName is the prime claim of a user's claim.
func PrimeName(pvc *corev1.PersistentVolumeClaim) string { return primePrefix + string(pvc.UID) }

// Action is the next thing to do for a claim.
type Action int

const (
	// Wait: nothing can be done now; Decision.Message says what for.
	Wait Action = iota
	// CreatePrime: restore the image into the prime claim.
	CreatePrime
	// Rebind: hand the prime claim's volume to the user's claim.
	Rebind
	// DeletePrime: the user's claim has its volume; the prime claim goes.
	DeletePrime
	// Done: nothing is left to do.
	Done
)

// Input is what Decide looks at; nil fields do not exist.
type Input struct {
	Claim   *corev1.PersistentVolumeClaim
	RD      *volsyncv1alpha1.ReplicationDestination
	Class   *storagev1.StorageClass
	Prime   *corev1.PersistentVolumeClaim
	PrimePV *corev1.PersistentVolume
}

// Decision is what to do, and for Wait why.
type Decision struct {
	Action  Action
	Message string
}

// Decide is the populator's state machine, one step at a time.
func Decide(in Input) Decision {
	claim := in.Claim
	if claim.Spec.VolumeName != "" {
		if in.Prime != nil {
			return Decision{Action: DeletePrime}
		}
		return Decision{Action: Done}
	}
	name := claim.Spec.DataSourceRef.Name
	switch {
	case in.RD == nil:
		return Decision{Message: fmt.Sprintf("waiting for ReplicationDestination %s to exist", name)}
	case in.RD.Status.LatestImage == nil:
		return Decision{Message: fmt.Sprintf("waiting for ReplicationDestination %s's first latestImage", name)}
	case in.Prime == nil && waitsForConsumer(in.Class) && claim.Annotations[annSelectedNode] == "":
		return Decision{Message: "waiting for a pod to use the claim: its storage class binds volumes on first consumer"}
	case in.Prime == nil:
		return Decision{Action: CreatePrime}
	case in.Prime.Status.Phase != corev1.ClaimBound || in.PrimePV == nil:
		return Decision{Message: fmt.Sprintf("restoring %s into claim %s", imageName(in.Prime), in.Prime.Name)}
	}
	if ref := in.PrimePV.Spec.ClaimRef; ref != nil && ref.UID == claim.UID {
		return Decision{Message: fmt.Sprintf("waiting for Kubernetes to bind volume %s to the claim", in.PrimePV.Name)}
	}
	return Decision{Action: Rebind}
}

func waitsForConsumer(class *storagev1.StorageClass) bool {
	return class != nil && class.VolumeBindingMode != nil && *class.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer
}

func imageName(prime *corev1.PersistentVolumeClaim) string {
	if ds := prime.Spec.DataSource; ds != nil {
		return ds.Kind + " " + ds.Name
	}
	return "the image"
}

// Prime is the prime claim for a user's claim: the same class, size, modes
// and node, restored from the destination's latestImage (a VolumeSnapshot,
// or with copyMethod Direct the destination's claim, cloned).
func Prime(claim *corev1.PersistentVolumeClaim, rd *volsyncv1alpha1.ReplicationDestination) *corev1.PersistentVolumeClaim {
	img := rd.Status.LatestImage
	source := &corev1.TypedLocalObjectReference{Kind: img.Kind, Name: img.Name}
	if img.APIGroup != nil {
		source.APIGroup = ptr.To(*img.APIGroup)
	}
	prime := &corev1.PersistentVolumeClaim{}
	prime.Namespace, prime.Name = claim.Namespace, PrimeName(claim)
	prime.Labels = map[string]string{LabelFor: string(claim.UID)}
	if node := claim.Annotations[annSelectedNode]; node != "" {
		prime.Annotations = map[string]string{annSelectedNode: node}
	}
	prime.Spec = corev1.PersistentVolumeClaimSpec{AccessModes: claim.Spec.AccessModes, Resources: claim.Spec.Resources,
		StorageClassName: claim.Spec.StorageClassName, VolumeMode: claim.Spec.VolumeMode, DataSource: source}
	return prime
}

// ClaimRef is the volume's claimRef that hands it to the user's claim.
func ClaimRef(claim *corev1.PersistentVolumeClaim) *corev1.ObjectReference {
	return &corev1.ObjectReference{APIVersion: "v1", Kind: "PersistentVolumeClaim", Namespace: claim.Namespace,
		Name: claim.Name, UID: claim.UID}
}
