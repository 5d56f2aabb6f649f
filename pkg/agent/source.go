package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	"github.com/ferrysync/ferry/pkg/transfer/cgroup"
	"github.com/ferrysync/ferry/pkg/transfer/compression"
	"github.com/ferrysync/ferry/pkg/transfer/sender"
	"github.com/ferrysync/ferry/pkg/transfer/sshkeys"
)

// interrupted is the error recorded for a sync that was running when the
// agent stopped without finishing it.
const interrupted = "interrupted: the node agent stopped during the sync; the next sync starts afresh"

// sourceRunner is the agent's source role: it runs the sync each source
// assignment asks for, once, in a goroutine of its own that outlives the
// reconcile, within the node's transfer slots.
type sourceRunner struct {
	*node
	scratch string        // where confinements mount their roots
	cgroups *cgroup.Pool  // each transfer's limits; nil: none
	slots   chan struct{} // one per concurrent transfer
	// bandwidth is the node's cap all transfers share (nil: none).
	bandwidth *rate.Limiter
	// aborted is closed a grace period after shutdown begins: running
	// transfers end then.
	aborted <-chan struct{}
	runs    sync.WaitGroup
	// records are what each source's last completed sync sent.
	records records

	states objects[sourceState]
}

// sourceState is what this process knows of a source assignment beyond
// its status.
type sourceState struct {
	mu sync.Mutex
	// running is the generation running (0: none), cancel and done its
	// end; finished is the last generation this process finished.
	running  int64
	cancel   context.CancelFunc
	done     chan struct{}
	finished int64
}

// sourceAction is what a reconcile of a source assignment does.
type sourceAction int

const (
	// sourceBusy: its sync runs in this process; nothing to do.
	sourceBusy sourceAction = iota
	// sourceInterrupted: the status says a sync runs that this process
	// never finished (it restarted): report it failed, never run it again.
	sourceInterrupted
	// sourceIdle: nothing asked, or the asked sync ran: nothing mounted.
	sourceIdle
	// sourceStart: run the asked sync.
	sourceStart
)

// decideSource is the source role's rule: a generation runs at most once.
// running and finished are this process' own record (0: none).
func decideSource(ma *agentv1alpha1.MountAssignment, running, finished int64) sourceAction {
	gen := ma.Spec.SyncGeneration
	switch {
	case running != 0:
		return sourceBusy
	case ma.Status.CurrentSync != nil && ma.Status.CurrentSync.Generation > finished:
		return sourceInterrupted
	case gen == 0 || ma.Ended() || finished >= gen:
		return sourceIdle
	}
	return sourceStart
}

// reconcile starts the transfer for spec.syncGeneration when decideSource
// says so.
func (r *sourceRunner) reconcile(ctx context.Context, ma *agentv1alpha1.MountAssignment) error {
	key := client.ObjectKeyFromObject(ma)
	s := r.states.of(ma)
	s.mu.Lock()
	action := decideSource(ma, s.running, s.finished)
	s.mu.Unlock()
	switch action {
	case sourceBusy:
		return nil
	case sourceInterrupted:
		return r.recordInterrupted(ctx, ma, ma.Status.CurrentSync.Generation)
	case sourceIdle:
		if err := r.publisher.Unpublish(ctx, volumeName(key)); err != nil {
			return err
		}
		if ma.Status.Phase != "" {
			return nil
		}
		return r.status.update(ctx, key, func(ma *agentv1alpha1.MountAssignment) {
			ma.Status.Phase = agentv1alpha1.PhasePending
			setReady(ma, true, agentv1alpha1.ReasonWaiting, "waiting for a sync to be asked for")
		})
	}
	pv, err := checkOwner(ctx, r.api, ma)
	if err != nil {
		return err
	}
	v, err := r.volumeFor(ctx, ma, pv, true)
	if err != nil {
		return err
	}
	keys, err := readKeys(ctx, r.node, ma.Spec.Source.KeySecret, sshkeys.ParseSource)
	if err != nil {
		return err
	}
	r.start(ctx, s, ma.DeepCopy(), func(ctx context.Context) (string, error) {
		return r.publish(ctx, key, v, "source")
	}, keys)
	return nil
}

// start runs the sync in a goroutine that outlives the reconcile: it ends
// when the assignment is released or the agent's grace period is over,
// not with the reconcile, and keeps the reconcile's logger.
func (r *sourceRunner) start(ctx context.Context, s *sourceState, ma *agentv1alpha1.MountAssignment, publish func(context.Context) (string, error), keys *sshkeys.Source) {
	gen := ma.Spec.SyncGeneration
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
		ended := r.run(runCtx, ma, publish, keys)
		s.mu.Lock()
		s.running, s.cancel = 0, nil
		if ended {
			s.finished = max(s.finished, gen)
		}
		s.mu.Unlock()
	}()
}

// stop cancels a source's transfer and waits for it to end, and forgets
// the source.
func (r *sourceRunner) stop(key types.NamespacedName) {
	s := r.states.get(key)
	if s == nil {
		return
	}
	s.mu.Lock()
	cancel, done := s.cancel, s.done
	s.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	r.states.drop(key, s)
}

// recordInterrupted reports a sync this process did not run to its end as
// failed, and unmounts its volume.
func (r *sourceRunner) recordInterrupted(ctx context.Context, ma *agentv1alpha1.MountAssignment, gen int64) error {
	key := client.ObjectKeyFromObject(ma)
	log.FromContext(ctx).Info("sync was interrupted; reporting it failed", "generation", gen)
	errorsTotal.WithLabelValues(r.labels(ma, agentv1alpha1.CauseInterrupted)...).Inc()
	r.events.Eventf(ma, nil, corev1.EventTypeWarning, agentv1alpha1.ReasonSyncInterrupted, "Sync", "sync %d: %s", gen, interrupted)
	syncsTotal.WithLabelValues(r.labels(ma, "failed")...).Inc()
	if err := r.publisher.Unpublish(ctx, volumeName(key)); err != nil {
		return err
	}
	s := r.states.of(ma)
	s.mu.Lock()
	s.finished = max(s.finished, gen)
	s.mu.Unlock()
	return r.status.update(ctx, key, func(ma *agentv1alpha1.MountAssignment) {
		start := ma.Status.CurrentSync.StartTime
		ma.Status.LastSync = &agentv1alpha1.SyncResult{Generation: gen, StartTime: start, EndTime: now(), Error: interrupted, ExitCode: -1}
		ma.Status.CurrentSync, ma.Status.MountPath = nil, ""
		ma.Status.Phase = agentv1alpha1.PhaseFailed
		setReady(ma, true, agentv1alpha1.ReasonSyncInterrupted, interrupted)
	})
}

// run runs one sync: wait for a slot, publish the volume read-only, report
// that the sync runs (before it does: a restart finds it and never runs it
// again), push, unmount, report the result. It returns false if the sync
// did not start and may be run later.
func (r *sourceRunner) run(ctx context.Context, ma *agentv1alpha1.MountAssignment, publish func(context.Context) (string, error), keys *sshkeys.Source) bool {
	key := client.ObjectKeyFromObject(ma)
	gen := ma.Spec.SyncGeneration
	ctx = log.IntoContext(ctx, log.FromContext(ctx).WithValues("generation", gen))
	if !r.acquire(ctx, key) {
		return false // not started: the next reconcile (or agent) runs it
	}
	defer func() { <-r.slots }()
	result := agentv1alpha1.SyncResult{Generation: gen, StartTime: now()}
	path, err := publish(ctx)
	if err != nil {
		r.finish(ctx, ma, &result, agentv1alpha1.CausePublish, fmt.Errorf("mount the volume read-only: %w", err))
		return true
	}
	result.StartTime = now()
	if err := r.status.update(ctx, key, func(ma *agentv1alpha1.MountAssignment) {
		ma.Status.Phase, ma.Status.MountPath = agentv1alpha1.PhaseTransferring, path
		ma.Status.CurrentSync = &agentv1alpha1.SyncProgress{Generation: gen, StartTime: result.StartTime, Attempt: 1}
		setReady(ma, true, agentv1alpha1.ReasonTransferring, "the volume is mounted read-only and being sent")
	}); err != nil {
		// Not reported as running, so not started: a later reconcile runs it.
		uctx, cancel := cleanupContext(ctx)
		defer cancel()
		log.FromContext(ctx).Error(errors.Join(err, r.publisher.Unpublish(uctx, volumeName(key))), "report transfer start; not starting")
		return false
	}
	activeTransfers.WithLabelValues(r.cfg.NodeName, "source").Inc()
	defer activeTransfers.WithLabelValues(r.cfg.NodeName, "source").Dec()
	res, err := sender.Push(ctx, r.pushOptions(ctx, ma, path, keys))
	result.BytesSent, result.BytesReceived, result.FilesTransferred = res.BytesSent, res.BytesReceived, res.FilesTransferred
	result.ExitCode, result.Summary = int32(res.ExitCode), res.Summary
	r.count(ma, res, result.StartTime.Time)
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("aborted: the node agent is shutting down: %w", err)
	}
	cause := agentv1alpha1.CauseTransfer
	if errors.Is(err, cgroup.ErrOOMKilled) {
		cause = agentv1alpha1.CauseOOMKilled
	}
	r.finish(ctx, ma, &result, cause, err)
	return true
}

// acquire takes one of the node's transfer slots, reporting the sync
// queued while it waits; false: ctx ended first.
func (r *sourceRunner) acquire(ctx context.Context, key types.NamespacedName) bool {
	select {
	case r.slots <- struct{}{}:
		return true
	default:
	}
	queued := queuedTransfers.WithLabelValues(r.cfg.NodeName)
	queued.Inc()
	defer queued.Dec()
	if err := r.status.update(ctx, key, func(ma *agentv1alpha1.MountAssignment) {
		ma.Status.Phase = agentv1alpha1.PhaseQueued
		setReady(ma, true, agentv1alpha1.ReasonQueued, fmt.Sprintf("waiting for one of the node's %d transfer slots", cap(r.slots)))
	}); err != nil {
		log.FromContext(ctx).Error(err, "report queued")
	}
	select {
	case r.slots <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// pushOptions are the transfer's settings: the assignment's, the node's,
// and progress written to the status.
func (r *sourceRunner) pushOptions(ctx context.Context, ma *agentv1alpha1.MountAssignment, path string, keys *sshkeys.Source) sender.Options {
	key := client.ObjectKeyFromObject(ma)
	logger := log.FromContext(ctx)
	src := ma.Spec.Source
	// The controller checked it; the CRD's pattern admits only forms Parse
	// reads, so an error is an out-of-range level: send uncompressed
	// rather than not at all.
	compress, err := compression.Parse(src.Compression)
	if err != nil {
		logger.Info("compression setting refused; sending uncompressed", "error", err.Error())
		compress = compression.None
	}
	return sender.Options{
		Address: src.Address, Port: int(src.Port), User: src.User, Path: src.Path, Keys: keys, Volume: path, Scratch: r.scratch, Cgroups: r.cgroups, Limits: limits(ma),
		Backoff: r.cfg.RetryBackoff, Keepalive: r.cfg.Keepalive, Rsync: r.cfg.Rsync, Log: logger, ProgressInterval: r.cfg.ProgressInterval, Compression: compress,
		BandwidthLimit: src.BandwidthLimit, NodeBandwidth: r.bandwidth,
		Record:   r.records.get(key, time.Now()),
		Progress: r.progress(ctx, key, ma.Spec.SyncGeneration),
	}
}

// progress writes a transfer's progress, with the rate since the last
// report of the same try, into the status.
func (r *sourceRunner) progress(ctx context.Context, key types.NamespacedName, gen int64) func(sender.Progress) {
	var last sender.Progress
	lastAt := time.Now()
	return func(p sender.Progress) {
		rate := int64(0)
		if dt := time.Since(lastAt).Seconds(); dt > 0 && p.Attempt == last.Attempt {
			rate = int64(float64(p.BytesDone-last.BytesDone) / dt)
		}
		last, lastAt = p, time.Now()
		if err := r.status.update(ctx, key, func(ma *agentv1alpha1.MountAssignment) {
			if cs := ma.Status.CurrentSync; cs != nil && cs.Generation == gen {
				cs.BytesDone, cs.FilesDone, cs.Attempt, cs.BytesPerSecond = p.BytesDone, p.FilesDone, int32(p.Attempt), max(rate, 0)
			}
		}); err != nil {
			log.FromContext(ctx).Error(err, "report progress")
		}
	}
}

// count adds a push's figures to the node's metrics.
func (r *sourceRunner) count(ma *agentv1alpha1.MountAssignment, res sender.Result, start time.Time) {
	bytesTotal.WithLabelValues(r.labels(ma, "sent")...).Add(float64(res.BytesSent))
	bytesTotal.WithLabelValues(r.labels(ma, "received")...).Add(float64(res.BytesReceived))
	filesTotal.WithLabelValues(r.labels(ma)...).Add(float64(res.FilesTransferred))
	switch {
	case res.Unchanged:
		unchangedTotal.WithLabelValues(r.labels(ma)...).Inc()
	case res.Listed > 0:
		incrementalTotal.WithLabelValues(r.labels(ma)...).Inc()
	}
	transferSeconds.WithLabelValues(r.labels(ma)...).Observe(time.Since(start).Seconds())
}

// finish unmounts the volume and reports the sync's result.
func (r *sourceRunner) finish(ctx context.Context, ma *agentv1alpha1.MountAssignment, result *agentv1alpha1.SyncResult, cause string, err error) {
	key := client.ObjectKeyFromObject(ma)
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
	logger := log.FromContext(ctx)
	r.syncEnded(logger, ma, result)
	if serr := r.status.update(ctx, key, func(ma *agentv1alpha1.MountAssignment) { recordSourceEnd(ma, result) }); serr != nil {
		logger.Error(serr, "report sync result")
	}
}

// recordSourceEnd writes a source's ended sync into its status.
func recordSourceEnd(ma *agentv1alpha1.MountAssignment, result *agentv1alpha1.SyncResult) {
	gen := result.Generation
	ma.Status.LastSync, ma.Status.CurrentSync, ma.Status.MountPath = result.DeepCopy(), nil, ""
	if result.Succeeded {
		ma.Status.Phase = agentv1alpha1.PhaseCompleted
		setReady(ma, true, agentv1alpha1.ReasonSyncSucceeded, fmt.Sprintf("sync %d succeeded", gen))
		return
	}
	ma.Status.Phase = agentv1alpha1.PhaseFailed
	setReady(ma, false, agentv1alpha1.ReasonSyncFailed, fmt.Sprintf("sync %d failed: %s", gen, result.Error))
}

// drain waits for running transfers to end, for at most grace; then it
// aborts them and waits for them to report so.
func (r *sourceRunner) drain(grace time.Duration, abort func()) {
	done := make(chan struct{})
	go func() { r.runs.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		r.log.Info("grace period over; aborting running transfers")
		abort()
		<-done
	}
}
