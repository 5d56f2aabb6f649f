package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	"github.com/ferrysync/ferry/pkg/transfer/compression"
	"github.com/ferrysync/ferry/pkg/transfer/source"
	"github.com/ferrysync/ferry/pkg/transfer/sshkeys"
)

// interrupted is the error recorded for a sync that was running when the
// agent stopped without finishing it.
const interrupted = "interrupted: the node agent stopped during the sync; the next sync starts afresh"

// reconcileSource starts the transfer for spec.syncGeneration unless it
// runs already, ran already, or was interrupted (a generation is never run
// twice: the controller asks again with a new one).
func (r *Reconciler) reconcileSource(ctx context.Context, ma *agentv1alpha1.MountAssignment) error {
	key := client.ObjectKeyFromObject(ma)
	gen := ma.Spec.SyncGeneration
	s := r.state(ma)
	s.mu.Lock()
	running, finished := s.running, s.finished
	s.mu.Unlock()
	if running != 0 {
		return nil
	}
	if cs := ma.Status.CurrentSync; cs != nil && cs.Generation > finished {
		return r.recordInterrupted(ctx, ma, cs.Generation)
	}
	if gen == 0 || (ma.Status.LastSync != nil && ma.Status.LastSync.Generation >= gen) || finished >= gen {
		// Nothing to run: make sure nothing stays mounted.
		if err := r.publisher.Unpublish(ctx, volumeName(key)); err != nil {
			return err
		}
		if ma.Status.Phase == "" {
			return r.updateStatus(key, func(ma *agentv1alpha1.MountAssignment) {
				ma.Status.Phase = agentv1alpha1.PhasePending
				setReady(ma, true, agentv1alpha1.ReasonWaiting, "waiting for a sync to be asked for")
			})
		}
		return nil
	}
	pv, err := checkOwner(ctx, r.api, ma)
	if err != nil {
		return err
	}
	v, err := r.volumeFor(ctx, ma, pv, true)
	if err != nil {
		return err
	}
	keys, err := readKeys(ctx, r, ma.Spec.Source.KeySecret, sshkeys.ParseSource)
	if err != nil {
		return err
	}
	// The transfer outlives this reconcile (it ends when the assignment is
	// released or the agent's grace period is over, not with the
	// reconcile) but keeps its logger.
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.mu.Lock()
	s.running, s.cancel, s.done = gen, cancel, make(chan struct{})
	done := s.done
	s.mu.Unlock()
	r.runs.Add(1)
	go func() {
		defer r.runs.Done()
		defer close(done)
		defer cancel()
		go func() {
			select {
			case <-r.aborted:
				cancel()
			case <-runCtx.Done():
			}
		}()
		ended := r.runSource(runCtx, ma.DeepCopy(), func(ctx context.Context) (string, error) {
			return r.publish(ctx, key, v, "source")
		}, keys)
		s.mu.Lock()
		s.running, s.cancel = 0, nil
		if ended {
			s.finished = max(s.finished, gen)
		}
		s.mu.Unlock()
	}()
	return nil
}

// recordInterrupted reports a sync this process did not run to its end as
// failed, and unmounts its volume.
func (r *Reconciler) recordInterrupted(ctx context.Context, ma *agentv1alpha1.MountAssignment, gen int64) error {
	key := client.ObjectKeyFromObject(ma)
	log.FromContext(ctx).Info("sync was interrupted; reporting it failed", "generation", gen)
	errorsTotal.WithLabelValues(r.labels(ma, agentv1alpha1.CauseInterrupted)...).Inc()
	r.events.Eventf(ma, nil, corev1.EventTypeWarning, agentv1alpha1.ReasonSyncInterrupted, "Sync", "sync %d: %s", gen, interrupted)
	syncsTotal.WithLabelValues(r.labels(ma, "failed")...).Inc()
	if err := r.publisher.Unpublish(ctx, volumeName(key)); err != nil {
		return err
	}
	s := r.state(ma)
	s.mu.Lock()
	s.finished = max(s.finished, gen)
	s.mu.Unlock()
	return r.updateStatus(key, func(ma *agentv1alpha1.MountAssignment) {
		start := ma.Status.CurrentSync.StartTime
		ma.Status.LastSync = &agentv1alpha1.SyncResult{Generation: gen, StartTime: start, EndTime: now(), Error: interrupted, ExitCode: -1}
		ma.Status.CurrentSync, ma.Status.MountPath = nil, ""
		ma.Status.Phase = agentv1alpha1.PhaseFailed
		setReady(ma, true, agentv1alpha1.ReasonSyncInterrupted, interrupted)
	})
}

// runSource runs one sync: wait for a slot, publish the volume read-only,
// report that the sync runs (before it does: a restart finds it and never
// runs it again), push, unmount, report the result. It returns false if the
// sync did not start and may be run later.
func (r *Reconciler) runSource(ctx context.Context, ma *agentv1alpha1.MountAssignment, publish func(context.Context) (string, error), keys *sshkeys.Source) bool {
	key := types.NamespacedName{Namespace: ma.Namespace, Name: ma.Name}
	gen := ma.Spec.SyncGeneration
	logger := log.FromContext(ctx).WithValues("generation", gen)
	result := agentv1alpha1.SyncResult{Generation: gen, StartTime: now()}
	finish := func(cause string, err error) {
		uctx, cancel := cleanupContext(ctx)
		defer cancel()
		if uerr := r.publisher.Unpublish(uctx, volumeName(key)); uerr != nil {
			err = errors.Join(err, fmt.Errorf("unmount after the sync: %w", uerr))
		}
		result.EndTime = now()
		if err != nil {
			result.Error = err.Error()
			errorsTotal.WithLabelValues(r.labels(ma, cause)...).Inc()
		}
		result.Succeeded = err == nil
		r.syncEnded(logger, ma, &result)
		if serr := r.updateStatus(key, func(ma *agentv1alpha1.MountAssignment) {
			ma.Status.LastSync, ma.Status.CurrentSync, ma.Status.MountPath = result.DeepCopy(), nil, ""
			ma.Status.Phase = agentv1alpha1.PhaseCompleted
			if !result.Succeeded {
				ma.Status.Phase = agentv1alpha1.PhaseFailed
			}
			if result.Succeeded {
				setReady(ma, true, agentv1alpha1.ReasonSyncSucceeded, fmt.Sprintf("sync %d succeeded", gen))
			} else {
				setReady(ma, false, agentv1alpha1.ReasonSyncFailed, fmt.Sprintf("sync %d failed: %s", gen, result.Error))
			}
		}); serr != nil {
			logger.Error(serr, "report sync result")
		}
	}

	select {
	case r.slots <- struct{}{}:
	default:
		queuedTransfers.WithLabelValues(r.cfg.NodeName).Inc()
		if err := r.updateStatus(key, func(ma *agentv1alpha1.MountAssignment) {
			ma.Status.Phase = agentv1alpha1.PhaseQueued
			setReady(ma, true, agentv1alpha1.ReasonQueued, fmt.Sprintf("waiting for one of the node's %d transfer slots", cap(r.slots)))
		}); err != nil {
			logger.Error(err, "report queued")
		}
		select {
		case r.slots <- struct{}{}:
			queuedTransfers.WithLabelValues(r.cfg.NodeName).Dec()
		case <-ctx.Done():
			queuedTransfers.WithLabelValues(r.cfg.NodeName).Dec()
			return false // not started: the next reconcile (or agent) runs it
		}
	}
	defer func() { <-r.slots }()

	path, err := publish(ctx)
	if err != nil {
		finish(agentv1alpha1.CausePublish, fmt.Errorf("mount the volume read-only: %w", err))
		return true
	}
	result.StartTime = now()
	if err := r.updateStatus(key, func(ma *agentv1alpha1.MountAssignment) {
		ma.Status.Phase, ma.Status.MountPath = agentv1alpha1.PhaseTransferring, path
		ma.Status.CurrentSync = &agentv1alpha1.SyncProgress{Generation: gen, StartTime: result.StartTime, Attempt: 1}
		setReady(ma, true, agentv1alpha1.ReasonTransferring, "the volume is mounted read-only and being sent")
	}); err != nil {
		// Not reported as running, so not started: a later reconcile runs it.
		uctx, cancel := cleanupContext(ctx)
		defer cancel()
		logger.Error(errors.Join(err, r.publisher.Unpublish(uctx, volumeName(key))), "report transfer start; not starting")
		return false
	}

	activeTransfers.WithLabelValues(r.cfg.NodeName, "source").Inc()
	defer activeTransfers.WithLabelValues(r.cfg.NodeName, "source").Dec()
	src := ma.Spec.Source
	// The controller checked it; the CRD's pattern admits only forms Parse
	// reads, so an error is an out-of-range level: send uncompressed
	// rather than not at all.
	compress, err := compression.Parse(src.Compression)
	if err != nil {
		logger.Info("compression setting refused; sending uncompressed", "error", err.Error())
		compress = compression.None
	}
	var last source.Progress
	lastAt := time.Now()
	res, err := source.Push(ctx, source.Options{
		Address: src.Address, Port: int(src.Port), User: src.User, Path: src.Path, Keys: keys, Volume: path, Scratch: r.scratch, Cgroups: r.cgroups, Limits: limits(ma),
		Backoff: r.cfg.RetryBackoff, Keepalive: r.cfg.Keepalive, Rsync: r.cfg.Rsync, Log: logger, ProgressInterval: r.cfg.ProgressInterval, Compression: compress,
		Record: r.records.get(key, time.Now()),
		Progress: func(p source.Progress) {
			rate := int64(0)
			if dt := time.Since(lastAt).Seconds(); dt > 0 && p.Attempt == last.Attempt {
				rate = int64(float64(p.BytesDone-last.BytesDone) / dt)
			}
			last, lastAt = p, time.Now()
			if err := r.updateStatus(key, func(ma *agentv1alpha1.MountAssignment) {
				if cs := ma.Status.CurrentSync; cs != nil && cs.Generation == gen {
					cs.BytesDone, cs.FilesDone, cs.Attempt, cs.BytesPerSecond = p.BytesDone, p.FilesDone, int32(p.Attempt), max(rate, 0)
				}
			}); err != nil {
				logger.Error(err, "report progress")
			}
		},
	})
	result.BytesSent, result.BytesReceived, result.FilesTransferred = res.BytesSent, res.BytesReceived, res.FilesTransferred
	result.ExitCode, result.Summary = int32(res.ExitCode), res.Summary
	bytesTotal.WithLabelValues(r.labels(ma, "sent")...).Add(float64(res.BytesSent))
	bytesTotal.WithLabelValues(r.labels(ma, "received")...).Add(float64(res.BytesReceived))
	filesTotal.WithLabelValues(r.labels(ma)...).Add(float64(res.FilesTransferred))
	switch {
	case res.Unchanged:
		unchangedTotal.WithLabelValues(r.labels(ma)...).Inc()
	case res.Listed > 0:
		incrementalTotal.WithLabelValues(r.labels(ma)...).Inc()
	}
	transferSeconds.WithLabelValues(r.labels(ma)...).Observe(time.Since(result.StartTime.Time).Seconds())
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("aborted: the node agent is shutting down: %w", err)
	}
	finish(agentv1alpha1.CauseTransfer, err)
	return true
}

// syncEnded does what every ended sync does, in either role: count it,
// log it, and tell kubectl describe.
func (r *Reconciler) syncEnded(logger logr.Logger, ma *agentv1alpha1.MountAssignment, res *agentv1alpha1.SyncResult) {
	outcome := "succeeded"
	if !res.Succeeded {
		outcome = "failed"
	}
	syncsTotal.WithLabelValues(r.labels(ma, outcome)...).Inc()
	logger.Info("sync ended", "generation", res.Generation, "result", outcome, "bytesSent", res.BytesSent,
		"bytesReceived", res.BytesReceived, "files", res.FilesTransferred, "error", res.Error)
	if res.Succeeded {
		r.events.Eventf(ma, nil, corev1.EventTypeNormal, agentv1alpha1.ReasonSyncSucceeded, "Sync", "sync %d: %d bytes sent, %d received, %d files",
			res.Generation, res.BytesSent, res.BytesReceived, res.FilesTransferred)
		return
	}
	r.events.Eventf(ma, nil, corev1.EventTypeWarning, agentv1alpha1.ReasonSyncFailed, "Sync", "sync %d: %s", res.Generation, res.Error)
}
