package destination

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/assign"
	"github.com/ferrysync/ferry/pkg/controller/cycle"
	"github.com/ferrysync/ferry/pkg/controller/moverlog"
	"github.com/ferrysync/ferry/pkg/controller/names"
	"github.com/ferrysync/ferry/pkg/controller/snapshot"
)

// DoNotDeleteLabel keeps an image snapshot when a newer one replaces it, as
// VolSync documents.
const DoNotDeleteLabel = "volsync.backube/do-not-delete"

// EventSnapshotCreated is the event reason for a new image.
const EventSnapshotCreated = "VolumeSnapshotCreated"

// Start lets the agent accept the next sync: it raises the generation of an
// assignment that holds the volume after the last one. (Before the first
// sync there is nothing to raise.)
func (w *work) Start(ctx context.Context) error {
	if w.ma == nil || !w.ma.Holding() {
		return nil
	}
	w.ma.Spec.SyncGeneration++
	if err := w.r.Client.Update(ctx, w.ma); err != nil {
		return fmt.Errorf("let assignment %s accept sync %d: %w", w.ma.Name, w.ma.Spec.SyncGeneration, err)
	}
	return nil
}

// Synchronize waits for the agent to report the sync of the current
// generation.
func (w *work) Synchronize(context.Context) (cycle.Result, error) {
	if w.ma == nil {
		msg := w.waiting
		if msg == "" {
			msg = "waiting for the volume to be published on a node"
		}
		return cycle.Result{Waiting: msg}, nil
	}
	res := outcome(w.ma, w.rd.Status.LastSyncStartTime)
	// The agent's reports come through the assignment's watch; an
	// attachment (w.waiting) does not, and is polled.
	res.Watched = !res.Done && w.waiting == ""
	if !res.Done && w.waiting != "" {
		res.Waiting = w.waiting
	}
	return res, nil
}

// outcome reads the state of the current sync from the assignment. A
// failed sync counts only if it ended after this cycle began (the agent
// keeps accepting the generation, and an earlier failure was already
// reported).
func outcome(ma *agentv1alpha1.MountAssignment, start *metav1.Time) cycle.Result {
	if ls := ma.Status.LastSync; ls != nil && ls.Generation == ma.Spec.SyncGeneration {
		if ls.Succeeded {
			return cycle.Result{Done: true, Succeeded: true, Logs: moverlog.Completed(ls,
				fmt.Sprintf("Ferry: received %d bytes, sent %d bytes (sync %d on node %s)", ls.BytesReceived, ls.BytesSent, ls.Generation, ma.Spec.NodeName))}
		}
		if start == nil || ls.EndTime == nil || !ls.EndTime.Before(start) {
			return cycle.Result{Done: true, Logs: ls.Error}
		}
	}
	res := cycle.Result{Progress: assign.Progress(ma)}
	switch ma.Status.Phase {
	case agentv1alpha1.PhaseTransferring:
		res.Waiting = "receiving data on node " + ma.Spec.NodeName
	case agentv1alpha1.PhaseMounted:
		res.Waiting = "waiting for the source to connect"
	case agentv1alpha1.PhaseHolding:
		res.Waiting = "waiting for the agent to accept the next sync"
	default:
		res.Waiting = fmt.Sprintf("waiting for the agent on node %s to serve the volume", ma.Spec.NodeName)
		if c := meta.FindStatusCondition(ma.Status.Conditions, agentv1alpha1.ConditionReady); c != nil && c.Status != metav1.ConditionTrue {
			res.Waiting += ": " + c.Message
		}
	}
	return res
}

// snapshotName names the image of the sync that started at start:
// <claim>-<YYYYMMDDHHMMSS>, the claim's part shortened for a long claim
// name. The cycle starts at most one sync per second, so the name is the
// sync's own, the same after a restart.
func snapshotName(claim string, start time.Time) string {
	stamp := "-" + start.UTC().Format("20060102150405")
	return names.Fit(claim, names.MaxObject-len(stamp)) + stamp
}

// Cleanup makes the image of a successful sync: a VolumeSnapshot of the
// held volume (Snapshot), or the volume itself (Direct). latestImage moves
// to it only once it is ready; the previous image is deleted only once the
// status names the new one.
func (w *work) Cleanup(ctx context.Context, succeeded bool) (bool, error) {
	rd, c := w.rd, w.r.Client
	if !succeeded {
		return true, nil
	}
	if rd.Spec.Rsync.CopyMethod.IsDirect() {
		rd.Status.LatestImage = &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: claimName(rd)}
		return true, nil
	}
	if rd.Status.LastSyncStartTime == nil {
		return true, nil // cannot name the image; not reached: the cycle sets it
	}
	name := snapshotName(claimName(rd), rd.Status.LastSyncStartTime.Time)
	labels := map[string]string{assign.LabelOwnerUID: string(rd.UID)}
	snap, err := snapshot.Ensure(ctx, c, rd, snapshot.Spec{Namespace: rd.Namespace, Name: name, Claim: claimName(rd),
		Class: rd.Spec.Rsync.VolumeSnapshotClassName, Labels: labels})
	if err != nil {
		return false, err
	}
	ready, _, err := snapshot.Ready(snap)
	if err != nil || !ready {
		return false, err
	}
	if img := rd.Status.LatestImage; img == nil || img.Name != name {
		rd.Status.LatestImage = snapshot.Ref(name)
		w.r.Events.Eventf(rd, nil, corev1.EventTypeNormal, EventSnapshotCreated, "Snapshot", "VolumeSnapshot %s holds the data of the sync", name)
		return false, nil // written first; the old image goes next pass
	}
	old, err := snapshot.Owned(ctx, c, rd.Namespace, rd.UID)
	if err != nil {
		return false, err
	}
	for _, s := range old {
		if s.GetName() == name || s.GetLabels()[DoNotDeleteLabel] != "" {
			continue
		}
		if err := snapshot.Delete(ctx, c, rd.Namespace, s.GetName()); err != nil {
			return false, err
		}
	}
	if dropsClaim(rd) && w.pvc != nil {
		return w.dropClaim(ctx)
	}
	return true, nil
}

// dropsClaim: VolSync's cleanupTempPVC asks for the claim Ferry provisioned
// to go after each successful sync (its data lives on in the image).
func dropsClaim(rd *volsyncv1alpha1.ReplicationDestination) bool {
	spec := rd.Spec.Rsync
	return spec.CleanupTempPVC && spec.DestinationPVC == nil && !spec.CopyMethod.IsDirect()
}

// dropClaim releases the provisioned claim (unmounted, detached) and
// deletes it; the next sync provisions a new one.
func (w *work) dropClaim(ctx context.Context) (bool, error) {
	if done, err := w.release(ctx, w.pvc.Spec.VolumeName); err != nil || !done {
		return false, err
	}
	if err := w.r.Client.Delete(ctx, w.pvc); client.IgnoreNotFound(err) != nil {
		return false, fmt.Errorf("delete claim %s (spec.rsync.cleanupTempPVC): %w", w.pvc.Name, err)
	}
	return true, nil
}
