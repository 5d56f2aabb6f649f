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

// CSISecretAnnotation is on the controller's copy of a PV's CSI node
// Secret and names the Secret it copies (namespace/name). The agent reads a
// copy only if it names the live PV's own reference: an assignment cannot
// hand it another Secret's contents.
const CSISecretAnnotation = "ferrysync.io/csi-secret"

// CSISecret says which of a PV's CSI node Secrets.
type CSISecret string

// The PV's node-stage and node-publish Secrets.
const (
	CSIStageSecret   CSISecret = "stage"
	CSIPublishSecret CSISecret = "publish"
)

// CSISecretCopy names the copy, in Ferry's namespace, of the assignment's
// PV's CSI node Secret of kind: the controller writes it with the
// assignment (owned by it, so it goes with it), and the agent, which reads
// only Ferry's namespace, reads it there. So the default install needs no
// agent that can read Secrets cluster-wide, and a Secret is readable by the
// agents only while a volume that names it is assigned.
func (ma *MountAssignment) CSISecretCopy(kind CSISecret) string {
	return ma.Name + "-csi-" + string(kind)
}
