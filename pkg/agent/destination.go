package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/transfer/cgroup"
	"github.com/ferrysync/ferry/pkg/transfer/confine"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
	"github.com/ferrysync/ferry/pkg/transfer/sshkeys"
)

// reconcileDestination publishes the volume read-write, serves it on the
// node's endpoint with its own host key and the one source key, and holds
// it after a completed sync until spec.syncGeneration moves on.
func (r *Reconciler) reconcileDestination(ctx context.Context, ma *agentv1alpha1.MountAssignment) error {
	key := client.ObjectKeyFromObject(ma)
	pv, err := checkOwner(ctx, r.api, ma)
	if err != nil {
		return err
	}
	if attachRequired, err := r.attachRequired(ctx, pv.Spec.CSI.Driver); err != nil {
		return err
	} else if attachRequired && ma.Spec.Volume.Attachment == nil {
		return r.updateStatus(key, func(ma *agentv1alpha1.MountAssignment) {
			ma.Status.Phase = agentv1alpha1.PhasePending
			setReady(ma, false, agentv1alpha1.ReasonWaitingForAttach, "the driver requires attach; waiting for the controller's VolumeAttachment")
		})
	}
	v, err := r.volumeFor(ctx, ma, pv, false)
	if err != nil {
		return err
	}
	keys, err := readKeys(ctx, r, ma.Spec.Destination.KeySecret, sshkeys.ParseDestination)
	if err != nil {
		return err
	}
	path, err := r.publish(ctx, key, v, "destination")
	if err != nil {
		return fmt.Errorf("mount the volume read-write: %w", err)
	}
	privileged, err := r.privileged(ctx, ma)
	if err != nil {
		return err
	}
	addr, err := r.serve(ma, path, keys, privileged)
	if err != nil {
		return err
	}
	// Decided on the fresh status, under the lock the endpoint's events
	// take too: a stale cache must never release a hold a sync just set.
	s := r.state(ma)
	s.mu.Lock()
	defer s.mu.Unlock()
	err = r.updateStatus(key, func(ma *agentv1alpha1.MountAssignment) {
		s.applyUnreported(ma)
		last := ma.Status.LastSync
		hold := last != nil && last.Succeeded && last.Generation >= ma.Spec.SyncGeneration
		// A sync that just ended and is not in the status yet keeps the
		// hold its shutdown set.
		if !r.server.Ending(key.String()) {
			r.server.Hold(key.String(), hold)
		}
		ma.Status.MountPath, ma.Status.Endpoint = path, addr
		switch {
		case s.live > 0:
			ma.Status.Phase = agentv1alpha1.PhaseTransferring
		case hold:
			ma.Status.Phase = agentv1alpha1.PhaseHolding
			ma.Status.CurrentSync = nil
		default:
			// A sync in status but none live is one a restart cut off;
			// the source retries it.
			ma.Status.Phase, ma.Status.CurrentSync = agentv1alpha1.PhaseMounted, nil
		}
		setReady(ma, true, agentv1alpha1.ReasonServing, "the volume is mounted read-write and accepts syncs")
	})
	if err == nil {
		s.unreported = nil
	}
	return err
}

// attachRequired reads the CSIDriver's attachRequired (a driver without a
// CSIDriver object requires attach, as Kubernetes assumes).
func (r *Reconciler) attachRequired(ctx context.Context, driver string) (bool, error) {
	d := &storagev1.CSIDriver{}
	if err := r.api.Get(ctx, client.ObjectKey{Name: driver}, d); err != nil {
		if client.IgnoreNotFound(err) == nil {
			return true, nil
		}
		return false, fmt.Errorf("get CSIDriver %s: %w", driver, err)
	}
	return d.Spec.AttachRequired == nil || *d.Spec.AttachRequired, nil
}

// privileged is whether the destination's syncs may keep owners, setuid
// bits and devices: its assignment says so and its CR's namespace carries
// the annotation. Read from the namespace, not trusted from the
// assignment, so that whoever can write assignments cannot grant it.
func (r *Reconciler) privileged(ctx context.Context, ma *agentv1alpha1.MountAssignment) (bool, error) {
	if !ma.Spec.Destination.Privileged {
		return false, nil
	}
	ns := &corev1.Namespace{}
	if err := r.api.Get(ctx, client.ObjectKey{Name: ma.Spec.Owner.Namespace}, ns); err != nil {
		return false, fmt.Errorf("read namespace %s for its privileged-movers annotation: %w", ma.Spec.Owner.Namespace, err)
	}
	return volsyncv1alpha1.PrivilegedMovers(ns), nil
}

// limits are the assignment's own limits on its transfers' cgroups (its
// CR's moverResources), which lower the agent's.
func limits(ma *agentv1alpha1.MountAssignment) cgroup.Limits {
	return cgroup.Limits{MemoryBytes: ma.Spec.Limits.Memory().Value(), CPUMillis: ma.Spec.Limits.Cpu().MilliValue()}
}

// runAs is the user an unprivileged destination's rsync runs as.
func runAs(ma *agentv1alpha1.MountAssignment) *confine.Identity {
	if id := ma.Spec.Destination.RunAs; id != nil {
		return &confine.Identity{UID: id.UID, GID: id.GID}
	}
	return nil
}

// serve registers the destination with the endpoint, again if its volume
// path, keys or rights changed, on the port it had before if it can (the
// controller's Service points there).
func (r *Reconciler) serve(ma *agentv1alpha1.MountAssignment, path string, keys *sshkeys.Destination, privileged bool) (*agentv1alpha1.Endpoint, error) {
	key := client.ObjectKeyFromObject(ma)
	id := key.String()
	fingerprint := fmt.Sprintf("%s|%s|%s|%t|%v|%v|%t", path, ssh.FingerprintSHA256(keys.HostKey.PublicKey()),
		ssh.FingerprintSHA256(keys.Authorized), privileged, ma.Spec.Destination.RunAs, limits(ma), ma.Spec.Destination.InPlace)
	s := r.state(ma)
	s.mu.Lock()
	served, ep := s.served, s.endpoint
	s.mu.Unlock()
	if served == fingerprint {
		return ep, nil
	}
	r.server.Remove(id)
	d := endpoint.Destination{ID: id, Keys: keys, Volume: path, Dir: "/", Privileged: privileged, RunAs: runAs(ma), Limits: limits(ma),
		InPlace:        ma.Spec.Destination.InPlace,
		HoldOnShutdown: true, Events: func(e endpoint.Event) { r.onDestinationEvent(key, e) }}
	// After a restart, listen where the controller's Service points;
	// otherwise on the first free port of the range.
	var prev int32
	if ep := ma.Status.Endpoint; ep != nil {
		prev = ep.Port
	}
	var addr net.Addr
	var err error
	for _, port := range r.cfg.Ports.Candidates(prev) {
		d.ListenAddr = net.JoinHostPort(r.cfg.SSHBindAddress, strconv.Itoa(int(port)))
		if addr, err = r.server.Add(d); err == nil {
			break
		}
	}
	if addr == nil {
		errorsTotal.WithLabelValues(r.labels(ma, agentv1alpha1.CauseEndpoint)...).Inc()
		return nil, fmt.Errorf("serve destination: no free port in the node's range %s (--ssh-port-range): %w", r.cfg.Ports, err)
	}
	ep = &agentv1alpha1.Endpoint{Address: r.cfg.SSHAdvertiseAddress, Port: int32(addr.(*net.TCPAddr).Port)}
	r.events.Eventf(ma, nil, corev1.EventTypeNormal, agentv1alpha1.ReasonServing, "Serve", "the volume is mounted at %s and accepts syncs on %s:%d", path, ep.Address, ep.Port)
	s.mu.Lock()
	s.served, s.path, s.endpoint = fingerprint, path, ep
	s.mu.Unlock()
	return ep, nil
}

// onDestinationEvent follows the syncs arriving at a destination: a sync
// runs from its first rsync to the source's `shutdown N`; at that point the
// volume is flushed to disk and, if the sync succeeded, held.
func (r *Reconciler) onDestinationEvent(key types.NamespacedName, e endpoint.Event) {
	ma := &agentv1alpha1.MountAssignment{}
	if err := r.client.Get(context.Background(), key, ma); err != nil {
		r.log.Error(err, "destination event for an assignment not in the cache", "assignment", key, "event", e.Kind)
		return
	}
	gen := ma.Spec.SyncGeneration
	s := r.state(ma)
	s.mu.Lock()
	defer s.mu.Unlock()
	var mutate func(*agentv1alpha1.MountAssignment)
	switch e.Kind {
	case endpoint.RsyncStarted:
		if s.live == 0 && s.start.IsZero() {
			s.start = e.Time
		}
		s.live++
		activeTransfers.WithLabelValues(r.cfg.NodeName, "destination").Inc()
		start := s.start
		mutate = func(ma *agentv1alpha1.MountAssignment) {
			ma.Status.Phase = agentv1alpha1.PhaseTransferring
			if ma.Status.CurrentSync == nil || ma.Status.CurrentSync.Generation != gen {
				ma.Status.CurrentSync = &agentv1alpha1.SyncProgress{Generation: gen, StartTime: timePtr(start)}
			}
			ma.Status.CurrentSync.Attempt++
		}
	case endpoint.RsyncEnded:
		s.live--
		activeTransfers.WithLabelValues(r.cfg.NodeName, "destination").Dec()
		s.received += e.BytesReceived
		s.sent += e.BytesSent
		bytesTotal.WithLabelValues(r.labels(ma, "received")...).Add(float64(e.BytesReceived))
		bytesTotal.WithLabelValues(r.labels(ma, "sent")...).Add(float64(e.BytesSent))
		if e.ExitCode != 0 {
			errorsTotal.WithLabelValues(r.labels(ma, agentv1alpha1.CauseTransfer)...).Inc()
		}
		if s.live == 0 {
			mutate = func(ma *agentv1alpha1.MountAssignment) { ma.Status.Phase = agentv1alpha1.PhaseMounted }
		}
	case endpoint.SyncEnded:
		result := agentv1alpha1.SyncResult{Generation: gen, StartTime: timePtr(s.start), EndTime: timePtr(e.Time),
			BytesReceived: s.received, BytesSent: s.sent, ExitCode: int32(e.ExitCode), Succeeded: e.ExitCode == 0}
		if e.ExitCode != 0 && e.Needed > 0 {
			result.Error = noSpace(ma, s.path, e.Needed)
		} else if e.Message != "" {
			result.Error = e.Message
		} else if e.ExitCode != 0 {
			result.Error = fmt.Sprintf("the source ended the sync with status %d", e.ExitCode)
		} else if err := syncfs(s.path); err != nil {
			result.Succeeded, result.Error = false, err.Error()
		}
		// The endpoint held the volume at `shutdown 0`; a sync that did
		// not end well is not held.
		r.server.Hold(key.String(), result.Succeeded)
		if !s.start.IsZero() {
			transferSeconds.WithLabelValues(r.labels(ma)...).Observe(e.Time.Sub(s.start).Seconds())
		}
		s.start, s.received, s.sent = time.Time{}, 0, 0
		r.syncEnded(r.log.WithValues("assignment", key), ma, &result)
		s.unreported = &result // until the write below lands
		mutate = func(*agentv1alpha1.MountAssignment) {}
	case endpoint.Refused:
		errorsTotal.WithLabelValues(r.labels(ma, agentv1alpha1.CauseRefusedRequest)...).Inc()
		r.log.Info("refused a request", "assignment", key, "reason", e.Message)
	}
	if mutate == nil {
		return
	}
	if err := r.updateStatus(key, func(ma *agentv1alpha1.MountAssignment) {
		s.applyUnreported(ma)
		mutate(ma)
	}); err != nil {
		r.log.Error(err, "report destination event", "assignment", key, "event", e.Kind)
	} else {
		s.unreported = nil
	}
	if s.unreported != nil && !s.redelivering {
		s.redelivering = true
		go r.redeliver(key, s)
	}
}

// noSpace says that a destination's volume ran out of space: which claim,
// how large its filesystem is and how much the source's volume uses (what
// the source said), so that the user knows what capacity to give it.
func noSpace(ma *agentv1alpha1.MountAssignment, path string, needed int64) string {
	size := "of unknown size"
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err == nil {
		size = "of " + formatBytes(int64(st.Blocks)*st.Bsize)
	}
	return noSpaceMessage(ma.Spec.Owner.Namespace+"/"+ma.Spec.Volume.Claim, size, needed)
}

// noSpaceMessage words noSpace's message.
func noSpaceMessage(claim, size string, needed int64) string {
	return fmt.Sprintf("the destination volume is full: claim %s, a filesystem %s, ran out of space; the source's volume uses %s: "+
		"give the destination (spec.rsync.capacity) at least that, with room for a changed file's new copy", claim, size, formatBytes(needed))
}

// formatBytes writes n bytes for people: 1.5 GiB.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// applyUnreported writes the end of a sync not in the status yet into an
// assignment's status (the same object's only: not one recreated under the
// name since).
func (s *state) applyUnreported(ma *agentv1alpha1.MountAssignment) {
	res := s.unreported
	if res == nil || ma.UID != s.uid {
		return
	}
	ma.Status.LastSync, ma.Status.CurrentSync = res.DeepCopy(), nil
	ma.Status.Phase = agentv1alpha1.PhaseMounted
	if res.Succeeded {
		ma.Status.Phase = agentv1alpha1.PhaseHolding
	}
}

// Redelivery of a sync's end backs off between these bounds while the
// apiserver stays away.
const (
	redeliverFirst = time.Second
	redeliverMax   = 30 * time.Second
)

// redeliver writes a destination's sync end that could not be written when
// the sync ended, until a write lands (this one, a later event's or a
// reconcile's), the assignment is gone, or the agent aborts. Status changes
// trigger no reconcile, and an apiserver that comes back brings no event of
// its own, so without this the controller would wait for the sync's end,
// and the volume stay held, until the next change of the assignment.
func (r *Reconciler) redeliver(key types.NamespacedName, s *state) {
	delay := redeliverFirst
	for {
		select {
		case <-time.After(delay):
		case <-r.aborted:
			return
		}
		s.mu.Lock()
		if s.unreported == nil {
			s.redelivering = false
			s.mu.Unlock()
			return
		}
		err := r.updateStatus(key, s.applyUnreported)
		if err == nil || apierrors.IsNotFound(err) {
			r.log.Info("reported a sync's end the apiserver missed", "assignment", key, "generation", s.unreported.Generation, "error", err)
			s.unreported, s.redelivering = nil, false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		delay = min(2*delay, redeliverMax)
	}
}

// syncfs flushes the volume's filesystem, so that a snapshot cut next holds
// everything the sync wrote.
func syncfs(path string) error {
	if path == "" {
		return errors.New("flush volume: not mounted")
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("flush volume: %w", err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("flush volume %s: %w", path, err)
	}
	return nil
}
