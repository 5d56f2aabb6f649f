package v1alpha1

import storagev1 "k8s.io/api/storage/v1"

// The contract between the controller and the agents, read the same way on
// both sides: each rule is here once, so that the side that asks and the
// side that carries out can never disagree about what a status means.

// Ended reports whether the sync of spec.syncGeneration has ended, well or
// not. A generation is run at most once: the controller asks again with a
// new one.
func (ma *MountAssignment) Ended() bool {
	ls := ma.Status.LastSync
	return ls != nil && ls.Generation >= ma.Spec.SyncGeneration
}

// Holding reports whether a destination's volume is held: its last sync
// succeeded and no newer one has been asked for, so the agent refuses
// writers until the controller, having cut its image, raises the
// generation.
func (ma *MountAssignment) Holding() bool {
	return ma.Ended() && ma.Status.LastSync.Succeeded
}

// Transferring reports whether a sync is on the wire now.
func (ma *MountAssignment) Transferring() bool {
	return ma.Status.Phase == PhaseTransferring
}

// AttachRequired reads a CSIDriver's attachRequired. A driver without a
// CSIDriver object (nil) requires attach, as Kubernetes assumes.
func AttachRequired(d *storagev1.CSIDriver) bool {
	return d == nil || d.Spec.AttachRequired == nil || *d.Spec.AttachRequired
}
