package source

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/assign"
	"github.com/ferrysync/ferry/pkg/controller/cycle"
	"github.com/ferrysync/ferry/pkg/controller/moverlog"
	"github.com/ferrysync/ferry/pkg/controller/snapshot"
)

// CleanupLabel marks a sync's temporary objects with the CR's UID, as
// VolSync marks them; they are deleted when the sync ends.
const CleanupLabel = "volsync.backube/cleanup"

// slowClone is how long a clone may wait to be bound before the condition
// suggests the driver may not clone at all.
const slowClone = time.Minute

// Event reasons of a source's sync.
const (
	EventCopyCreated     = "PointInTimeCopyCreated"
	EventTransferStarted = "TransferStarted"
)

// Start has nothing to prepare: the copy is made in Synchronize.
func (w *work) Start(context.Context) error { return nil }

// Synchronize makes the copy, places it, writes the assignment and reads
// the transfer's progress and result from it.
func (w *work) Synchronize(ctx context.Context) (cycle.Result, error) {
	if w.ma == nil && w.mover != "" {
		return cycle.Result{Waiting: w.mover}, nil // VolSync's last sync is still on the wire
	}
	if w.ma == nil {
		pvc, waiting, err := w.pointInTime(ctx)
		if err != nil || waiting != "" {
			return cycle.Result{Waiting: waiting}, err
		}
		if waiting, err := w.assign(ctx, pvc); err != nil || waiting != "" {
			return cycle.Result{Waiting: waiting}, err
		}
	}
	// The agent's reports (queued, progress, the end) come through the
	// assignment's watch.
	res := outcome(w.ma)
	res.Watched = !res.Done
	return res, nil
}

// outcome reads the transfer's state from the assignment.
func outcome(ma *agentv1alpha1.MountAssignment) cycle.Result {
	if ma.Ended() {
		ls := ma.Status.LastSync
		if ls.Succeeded {
			return cycle.Result{Done: true, Succeeded: true, Logs: moverlog.Completed(ls,
				fmt.Sprintf("Ferry: sent %d bytes, %d files changed, from node %s", ls.BytesSent, ls.FilesTransferred, ma.Spec.NodeName))}
		}
		logs := ls.Error
		if ls.Summary != "" {
			logs += "\n" + ls.Summary
		}
		return cycle.Result{Done: true, Logs: logs}
	}
	res := cycle.Result{Progress: assign.Progress(ma)}
	if cs := ma.Status.CurrentSync; cs != nil {
		res.Waiting = fmt.Sprintf("sending from node %s: %d bytes, %d files so far (try %d)", ma.Spec.NodeName,
			cs.BytesDone, cs.FilesDone, cs.Attempt)
		return res
	}
	switch ma.Status.Phase {
	case agentv1alpha1.PhaseQueued:
		res.Waiting = fmt.Sprintf("queued on node %s: its transfer slots are busy", ma.Spec.NodeName)
	case agentv1alpha1.PhaseRefused, agentv1alpha1.PhaseFailed:
		why := string(ma.Status.Phase)
		if c := meta.FindStatusCondition(ma.Status.Conditions, agentv1alpha1.ConditionReady); c != nil {
			why = c.Message
		}
		res.Waiting = fmt.Sprintf("the agent on node %s: %s", ma.Spec.NodeName, why)
	default:
		res.Waiting = fmt.Sprintf("waiting for the agent on node %s to start the transfer", ma.Spec.NodeName)
	}
	return res
}

// assign places the copy and writes the assignment.
func (w *work) assign(ctx context.Context, pvc *corev1.PersistentVolumeClaim) (string, error) {
	rs, c := w.rs, w.r.Client
	spec := rs.Spec.Rsync
	pv := &corev1.PersistentVolume{}
	if err := c.Get(ctx, client.ObjectKey{Name: pvc.Spec.VolumeName}, pv); err != nil {
		return "", fmt.Errorf("get volume of %s: %w", pvc.Name, err)
	}
	podNode := ""
	if spec.CopyMethod.IsDirect() {
		var err error
		if podNode, err = assign.UsedOn(ctx, w.r.Pods, rs.Namespace, pvc.Name); err != nil {
			return "", err
		}
	}
	vol, node, err := assign.Locate(ctx, c, pv, pvc.Name, string(rs.UID), podNode)
	if err != nil {
		return "", cycle.InvalidIf(err, assign.ErrUnplaceable)
	}
	// kubelet has it mounted for the pod: the agent binds that. The
	// attachment is kubelet's then (Attach makes none beside it), which the
	// agent publishes with if the pod has gone meanwhile.
	vol.ReuseKubeletMount = podNode != "" && node == podNode
	attachment, attached, err := assign.Attach(ctx, c, vol, node)
	if err != nil {
		return "", err
	}
	if !attached {
		return fmt.Sprintf("waiting for %s to attach to node %s", pvc.Name, node), nil
	}
	vol.Attachment = attachment
	privileged, err := assign.Privileged(ctx, c, rs.Namespace)
	if err != nil {
		return "", err
	}
	role, err := sourceRole(rs, agentv1alpha1.SecretReference{Namespace: w.r.Assignments.Namespace, Name: w.owner.KeysName()}, privileged)
	if err != nil {
		return "", err
	}
	ma, err := w.r.Assignments.Ensure(ctx, w.owner, agentv1alpha1.MountAssignmentSpec{NodeName: node,
		Owner: w.owner.Ref(), Volume: vol, Source: role, SyncGeneration: 1, Limits: assign.Limits(spec.MoverResources)})
	if err != nil || ma == nil {
		return "waiting for the previous assignment to go", err
	}
	w.ma = ma
	w.r.Events.Eventf(rs, nil, corev1.EventTypeNormal, EventTransferStarted, "Transfer",
		"node %s sends %s to %s:%d", node, pvc.Name, role.Address, role.Port)
	return "", nil
}

// Cleanup ends the sync: the assignment goes (the agent unmounts the
// copy), then the copy's attachment, then the copy and its snapshot.
func (w *work) Cleanup(ctx context.Context, _ bool) (bool, error) {
	done, err := w.release(ctx)
	if err != nil || !done || w.rs.Spec.Rsync.CopyMethod.IsDirect() {
		return done, err
	}
	c := w.rs
	gone := true
	pvc := &corev1.PersistentVolumeClaim{}
	err = w.r.Client.Get(ctx, client.ObjectKey{Namespace: c.Namespace, Name: w.copyName()}, pvc)
	switch {
	case err == nil:
		gone = false
		if pvc.DeletionTimestamp == nil {
			if err := w.r.Client.Delete(ctx, pvc); client.IgnoreNotFound(err) != nil {
				return false, fmt.Errorf("delete copy %s: %w", pvc.Name, err)
			}
		}
	case !apierrors.IsNotFound(err):
		return false, fmt.Errorf("get copy %s: %w", w.copyName(), err)
	}
	snap, err := snapshot.Get(ctx, w.r.Client, c.Namespace, w.copyName())
	if err != nil {
		return false, err
	}
	if snap != nil {
		gone = false
		if err := snapshot.Delete(ctx, w.r.Client, c.Namespace, w.copyName()); err != nil {
			return false, err
		}
	}
	return gone, nil
}

// sourceRole is what the agent needs to push rs: where to, as whom, with
// which keys (keys, the copy in Ferry's namespace) and rights, and the
// user's compression and bandwidth annotations.
func sourceRole(rs *volsyncv1alpha1.ReplicationSource, keys agentv1alpha1.SecretReference, privileged bool) (*agentv1alpha1.SourceRole, error) {
	spec := rs.Spec.Rsync
	limit, err := bandwidthLimit(rs)
	if err != nil {
		return nil, err
	}
	return &agentv1alpha1.SourceRole{Address: ptr.Deref(spec.Address, ""), Port: ptr.Deref(spec.Port, 22),
		User: ptr.Deref(spec.SSHUser, "root"), Path: ptr.Deref(spec.Path, "/"), KeySecret: keys, Privileged: privileged,
		Compression: rs.Annotations[volsyncv1alpha1.CompressionAnnotation], BandwidthLimit: limit}, nil
}

// bandwidthLimit reads rs's bandwidth annotation; a bad one is the user's
// to fix.
func bandwidthLimit(rs *volsyncv1alpha1.ReplicationSource) (int64, error) {
	limit, err := volsyncv1alpha1.BandwidthLimit(rs.Annotations)
	if err != nil {
		return 0, cycle.Invalidf("annotation %s: %v", volsyncv1alpha1.BandwidthLimitAnnotation, err)
	}
	return limit, nil
}
