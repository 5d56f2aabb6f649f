// Package takeover lets Ferry's controller carry on, in place, from where
// VolSync's rsync mover left a ReplicationSource or ReplicationDestination:
// the names VolSync gives what it makes (so that Ferry finds VolSync's
// Service, Secrets and claims as its own), and VolSync's mover Job, which
// Ferry waits out and then cleans up as VolSync would, so that a VolSync
// mover and Ferry's agent never write one volume at once. Everything else
// VolSync left (key Secrets, the destination claim, the image snapshot, the
// status) Ferry uses as it finds it.
package takeover

import (
	"context"
	"fmt"
	"hash/crc32"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Labels VolSync puts on what it makes.
const (
	// CreatedByLabel (app.kubernetes.io/created-by=volsync) marks objects
	// VolSync's controller made; the controller caches only such Jobs.
	CreatedByLabel = "app.kubernetes.io/created-by"
	// CreatedByVolSync is its value.
	CreatedByVolSync = "volsync"
)

// EventMoverJobRemoved is the event reason when Ferry deletes the mover Job
// VolSync left.
const EventMoverJobRemoved = "VolSyncMoverJobRemoved"

// maxName is the longest name VolSync gives a Job or Service (a DNS label).
const maxName = 63

// ShortName is prefix+name, as VolSync names a CR's Service and mover Job,
// or prefix and the CRC-32 of name in hex when that is longer than a DNS
// label, as VolSync shortens it: a long-named CR keeps its Service (and
// the address sources use) across the switch.
func ShortName(prefix, name string) string {
	if len(prefix+name) <= maxName {
		return prefix + name
	}
	return fmt.Sprintf("%s%08x", prefix, crc32.ChecksumIEEE([]byte(name)))
}

// Side is which end a CR is; VolSync's names carry it.
type Side string

// The two sides, as VolSync writes them in names.
const (
	Source      Side = "src"
	Destination Side = "dst"
)

// JobName is the mover Job VolSync runs for a CR of side named name.
func JobName(side Side, name string) string {
	return ShortName("volsync-rsync-"+string(side)+"-", name)
}

// Action is what to do about the mover Job found for a CR.
type Action int

const (
	// None: no VolSync mover Job, or one that is not the CR's.
	None Action = iota
	// Wait: VolSync's mover still runs (VolSync was stopped mid-sync);
	// Ferry touches nothing until it ends.
	Wait
	// Remove: the mover has ended; delete it and its pods as VolSync's
	// cleanup would.
	Remove
)

// Decide says what to do about job (nil: none found) for the CR with uid.
func Decide(job *batchv1.Job, uid string) Action {
	if job == nil || !ownedBy(job, uid) {
		return None
	}
	if job.DeletionTimestamp != nil {
		return Wait // until it is gone: its pod may still be writing
	}
	if finished(job) {
		return Remove
	}
	return Wait
}

func ownedBy(obj metav1.Object, uid string) bool {
	ref := metav1.GetControllerOf(obj)
	return ref != nil && string(ref.UID) == uid
}

// finished: the Job completed or failed for good. VolSync's rsync Jobs run
// one pod at a time (backoffLimit 2); a Job with no pod left running and
// none it could start (parallelism 0: VolSync paused it) has ended as far
// as the volume is concerned.
func finished(job *batchv1.Job) bool {
	for _, c := range job.Status.Conditions {
		if (c.Type == batchv1.JobComplete || c.Type == batchv1.JobFailed) && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	paused := job.Spec.Parallelism != nil && *job.Spec.Parallelism == 0
	return paused && job.Status.Active == 0
}

// Mover finds VolSync's mover Job for owner (of side) and deals with it:
// it returns what Ferry waits for while the Job runs, "" when there is
// none (any longer). A finished Job is deleted, its pods with it, and an
// event on owner says so.
func Mover(ctx context.Context, c client.Client, rec events.EventRecorder, owner client.Object, side Side) (string, error) {
	name := JobName(side, owner.GetName())
	job := &batchv1.Job{}
	err := c.Get(ctx, client.ObjectKey{Namespace: owner.GetNamespace(), Name: name}, job)
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("get VolSync mover Job %s: %w", name, err)
	}
	switch Decide(job, string(owner.GetUID())) {
	case Wait:
		return fmt.Sprintf("waiting for VolSync's mover Job %s to finish: Ferry takes over the volume once it has", name), nil
	case Remove:
		err := c.Delete(ctx, job, client.PropagationPolicy(metav1.DeletePropagationBackground),
			client.Preconditions{UID: &job.UID})
		if client.IgnoreNotFound(err) != nil {
			return "", fmt.Errorf("delete VolSync mover Job %s: %w", name, err)
		}
		rec.Eventf(owner, job, corev1.EventTypeNormal, EventMoverJobRemoved, "Cleanup",
			"VolSync's mover Job %s had finished: deleted it, and Ferry serves this CR from now on", name)
	}
	return "", nil
}
