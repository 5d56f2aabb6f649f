package destination

// What a reconcile does with the destination volume, decided from what it
// found: a pure rule, table-tested, apart from the reads and writes that
// carry it out.

// volumeAction is what happens to the destination volume in this reconcile.
type volumeAction int

const (
	// volumeWait: not bound yet; the cycle reports what it waits for.
	volumeWait volumeAction = iota
	// volumeYield: VolSync's mover still writes the volume (a takeover
	// mid-sync): nothing is assigned until its Job ends.
	volumeYield
	// volumeLeave: the claim goes at the end of this cleanup
	// (cleanupTempPVC): nothing is assigned on it again.
	volumeLeave
	// volumePause: paused: the volume goes back to Kubernetes.
	volumePause
	// volumeLend: a pod wants the claim: Ferry lets go of it, and syncs
	// wait until the pod is gone (never two writers).
	volumeLend
	// volumeAssign: place, attach and assign the volume to a node's agent.
	volumeAssign
)

// volumeFacts is what decideVolume reads.
type volumeFacts struct {
	// bound: the claim's volume exists.
	bound bool
	// mover is what VolSync's running mover Job makes the volume wait for
	// ("": none).
	mover string
	// droppingClaim: cleanupTempPVC is set and this is the cleanup.
	droppingClaim bool
	// paused is spec.paused.
	paused bool
	// transferring: a sync is on the wire now; it finishes before the
	// volume is paused or lent.
	transferring bool
	// users are the pods that use the claim.
	users int
}

// decideVolume is the destination's rule for its volume.
func decideVolume(f volumeFacts) volumeAction {
	switch {
	case !f.bound:
		return volumeWait
	case f.mover != "":
		return volumeYield
	case f.droppingClaim:
		return volumeLeave
	case f.paused && !f.transferring:
		return volumePause
	case f.users > 0 && !f.transferring:
		return volumeLend
	}
	return volumeAssign
}
