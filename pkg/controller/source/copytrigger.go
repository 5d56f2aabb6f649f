package source

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
)

// Copy triggers, as VolSync serves them: a source claim annotated
// use-copy-trigger gets its point-in-time copy only once the application
// (which quiesced itself first) sets copy-trigger to a new value; the
// latest-copy-* annotations on the claim say where that stands, so the
// application knows when it may go on.
const (
	UseCopyTriggerAnnotation         = "volsync.backube/use-copy-trigger"
	CopyTriggerAnnotation            = "volsync.backube/copy-trigger"
	LatestCopyTriggerAnnotation      = "volsync.backube/latest-copy-trigger"
	LatestCopyStatusAnnotation       = "volsync.backube/latest-copy-status"
	LatestCopyWaitingSinceAnnotation = "volsync.backube/latest-copy-trigger-waiting-since"

	CopyStatusWaitingForTrigger = "WaitingForTrigger"
	CopyStatusInProgress        = "InProgress"
	CopyStatusCompleted         = "Completed"

	// EventCopyTriggerTimeout says a sync has waited for its copy trigger
	// longer than the timeout (VolSync's: 10 minutes).
	EventCopyTriggerTimeout   = "CopyTriggerTimeout"
	DefaultCopyTriggerTimeout = 10 * time.Minute
)

// copyGate is what the copy trigger says about taking the copy now.
type copyGate struct {
	// Take: take the copy (or go on taking it).
	Take bool
	// Set are annotations to write on the source claim; "" removes one.
	Set map[string]string
	// Since is when the wait began; TimedOut says it has lasted past the
	// timeout.
	Since    time.Time
	TimedOut bool
}

// decideCopy reads a source claim's annotations: without use-copy-trigger
// the copy is taken; with it, only for a copy-trigger value not used yet
// (or while a copy is in progress), else the claim says it waits and since
// when.
func decideCopy(ann map[string]string, now time.Time, timeout time.Duration) copyGate {
	if _, on := ann[UseCopyTriggerAnnotation]; !on {
		return copyGate{Take: true}
	}
	if ann[LatestCopyStatusAnnotation] == CopyStatusInProgress {
		return copyGate{Take: true}
	}
	if t := ann[CopyTriggerAnnotation]; t != "" && t != ann[LatestCopyTriggerAnnotation] {
		return copyGate{Take: true, Set: changed(ann, map[string]string{
			LatestCopyStatusAnnotation: CopyStatusInProgress, LatestCopyWaitingSinceAnnotation: ""})}
	}
	since, err := time.Parse(time.RFC3339, ann[LatestCopyWaitingSinceAnnotation])
	if err != nil {
		since = now.UTC().Truncate(time.Second)
	}
	return copyGate{Since: since, TimedOut: now.Sub(since) > timeout, Set: changed(ann, map[string]string{
		LatestCopyStatusAnnotation: CopyStatusWaitingForTrigger, LatestCopyWaitingSinceAnnotation: since.Format(time.RFC3339)})}
}

// copyTaken is what a claim's annotations become once the copy it waited
// for exists: the trigger value used, and Completed.
func copyTaken(ann map[string]string) map[string]string {
	if _, on := ann[UseCopyTriggerAnnotation]; !on || ann[LatestCopyStatusAnnotation] != CopyStatusInProgress {
		return nil
	}
	return changed(ann, map[string]string{LatestCopyTriggerAnnotation: ann[CopyTriggerAnnotation],
		LatestCopyStatusAnnotation: CopyStatusCompleted})
}

// changed keeps of want what ann does not hold already ("" values: what
// ann has and must lose).
func changed(ann, want map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range want {
		if cur, ok := ann[k]; (v == "" && ok) || (v != "" && cur != v) {
			out[k] = v
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// annotate writes annotations on a claim with a merge patch ("" removes
// one), so that the application's own annotations are never lost.
func annotate(ctx context.Context, c client.Client, pvc *corev1.PersistentVolumeClaim, set map[string]string) error {
	if len(set) == 0 {
		return nil
	}
	patch := map[string]any{}
	for k, v := range set {
		if v == "" {
			patch[k] = nil
		} else {
			patch[k] = v
		}
	}
	raw, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": patch}})
	if err != nil {
		return fmt.Errorf("encode copy-trigger annotations: %w", err)
	}
	if err := c.Patch(ctx, pvc, client.RawPatch("application/merge-patch+json", raw)); err != nil {
		return fmt.Errorf("annotate claim %s: %w", pvc.Name, err)
	}
	if pvc.Annotations == nil {
		pvc.Annotations = map[string]string{}
	}
	for k, v := range set {
		if v == "" {
			delete(pvc.Annotations, k)
		} else {
			pvc.Annotations[k] = v
		}
	}
	return nil
}

// gate applies the source claim's copy trigger before the copy is taken:
// it says what the sync waits for ("" to take the copy now). Past the
// timeout the wait goes on, but latestMoverStatus and an event say the
// sync is late and why.
func (w *work) gate(ctx context.Context, src *corev1.PersistentVolumeClaim) (string, error) {
	g := decideCopy(src.Annotations, w.r.Now(), w.r.CopyTriggerTimeout)
	if err := annotate(ctx, w.r.Client, src, g.Set); err != nil {
		return "", err
	}
	if g.Take {
		return "", nil
	}
	msg := fmt.Sprintf("waiting for the application to set %s on claim %s to a new value (the claim uses copy triggers)",
		CopyTriggerAnnotation, src.Name)
	if !g.TimedOut {
		return msg, nil
	}
	logs := fmt.Sprintf("timed out waiting for the copy trigger: claim %s has waited for a new %s since %s; still waiting",
		src.Name, CopyTriggerAnnotation, g.Since.Format(time.RFC3339))
	if st := w.rs.Status.LatestMoverStatus; st == nil || st.Logs != logs {
		w.rs.Status.LatestMoverStatus = &volsyncv1alpha1.MoverStatus{Result: volsyncv1alpha1.MoverResultFailed, Logs: logs}
		w.r.Events.Eventf(w.rs, nil, corev1.EventTypeWarning, EventCopyTriggerTimeout, "Copy", "%s", logs)
	}
	return msg + "; " + logs, nil
}
