package agent

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/transfer/cgroup"
	"github.com/ferrysync/ferry/pkg/transfer/confine"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
	"github.com/ferrysync/ferry/pkg/transfer/sshkeys"
)

// destinationServer is the agent's destination role: it publishes each
// destination's volume read-write, serves it on the node's ssh endpoint
// with its own host key and the one source key, follows the syncs that
// arrive (syncs.go's tracker) and holds the volume after a completed one
// until spec.syncGeneration moves on.
type destinationServer struct {
	*node
	server server
	// ctx carries the agent's logger to the work the endpoint's events
	// start. It does not end with the manager: a sync that ends during the
	// shutdown's grace period must still be read from the cache and
	// reported.
	ctx context.Context
	// aborted ends redelivery when the agent stops.
	aborted <-chan struct{}

	states objects[destinationState]
}

// destinationState is what this process knows of a destination beyond its
// status. It belongs to one object (uid).
type destinationState struct {
	uid types.UID
	mu  sync.Mutex
	// served is what is registered with the endpoint (a fingerprint of
	// path, keys and rights), at path and endpoint.
	served   string
	path     string
	endpoint *agentv1alpha1.Endpoint
	syncs    tracker
	// unreported is the end of a sync that could not be written to the
	// status when it happened (the apiserver away): the volume stays held
	// and the end is written again until it lands (redelivering), for the
	// controller makes the image only from the status.
	unreported   *agentv1alpha1.SyncResult
	redelivering bool
}

// stop stops serving a destination and forgets it.
func (d *destinationServer) stop(key types.NamespacedName) {
	d.server.Remove(key.String())
	if s := d.states.get(key); s != nil {
		d.states.drop(key, s)
	}
}

// reconcile publishes and serves the volume, and writes the status that
// says so.
func (d *destinationServer) reconcile(ctx context.Context, ma *agentv1alpha1.MountAssignment) error {
	key := client.ObjectKeyFromObject(ma)
	pv, err := checkOwner(ctx, d.api, ma)
	if err != nil {
		return err
	}
	if attach, err := d.attachRequired(ctx, pv.Spec.CSI.Driver); err != nil {
		return err
	} else if attach && ma.Spec.Volume.Attachment == nil {
		return d.status.update(ctx, key, func(ma *agentv1alpha1.MountAssignment) {
			ma.Status.Phase = agentv1alpha1.PhasePending
			setReady(ma, false, agentv1alpha1.ReasonWaitingForAttach, "the driver requires attach; waiting for the controller's VolumeAttachment")
		})
	}
	v, err := d.volumeFor(ctx, ma, pv, false)
	if err != nil {
		return err
	}
	keys, err := readKeys(ctx, d.node, ma.Spec.Destination.KeySecret, sshkeys.ParseDestination)
	if err != nil {
		return err
	}
	path, err := d.publish(ctx, key, v, "destination")
	if err != nil {
		return fmt.Errorf("mount the volume read-write: %w", err)
	}
	privileged, err := d.privileged(ctx, ma)
	if err != nil {
		return err
	}
	addr, err := d.serve(ma, path, keys, privileged)
	if err != nil {
		return err
	}
	// Decided on the fresh status, under the lock the endpoint's events
	// take too: a stale cache must never release a hold a sync just set.
	s := d.states.of(ma)
	s.mu.Lock()
	defer s.mu.Unlock()
	err = d.status.update(ctx, key, func(ma *agentv1alpha1.MountAssignment) {
		s.applyUnreported(ma)
		hold := serveStatus(ma, path, addr, s.syncs.live)
		// A sync that just ended and is not in the status yet keeps the
		// hold its shutdown set.
		if !d.server.Ending(key.String()) {
			d.server.Hold(key.String(), hold)
		}
	})
	if err == nil {
		s.unreported = nil
	}
	return err
}

// attachRequired reads the driver's CSIDriver and applies the assignment
// API's rule (agentv1alpha1.AttachRequired), which the controller applies
// too.
func (d *destinationServer) attachRequired(ctx context.Context, driver string) (bool, error) {
	obj := &storagev1.CSIDriver{}
	if err := d.api.Get(ctx, client.ObjectKey{Name: driver}, obj); err != nil {
		if !apierrors.IsNotFound(err) {
			return false, fmt.Errorf("read CSIDriver %s: %w", driver, err)
		}
		obj = nil
	}
	return agentv1alpha1.AttachRequired(obj), nil
}

// privileged is whether the destination's syncs may keep owners, setuid
// bits and devices: its assignment says so and its CR's namespace carries
// the annotation. Read from the namespace, not trusted from the
// assignment, so that whoever can write assignments cannot grant it.
func (d *destinationServer) privileged(ctx context.Context, ma *agentv1alpha1.MountAssignment) (bool, error) {
	if !ma.Spec.Destination.Privileged {
		return false, nil
	}
	ns := &corev1.Namespace{}
	if err := d.api.Get(ctx, client.ObjectKey{Name: ma.Spec.Owner.Namespace}, ns); err != nil {
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
func (d *destinationServer) serve(ma *agentv1alpha1.MountAssignment, path string, keys *sshkeys.Destination, privileged bool) (*agentv1alpha1.Endpoint, error) {
	key := client.ObjectKeyFromObject(ma)
	id := key.String()
	fingerprint := fmt.Sprintf("%s|%s|%s|%t|%v|%v|%t", path, ssh.FingerprintSHA256(keys.HostKey.PublicKey()),
		ssh.FingerprintSHA256(keys.Authorized), privileged, ma.Spec.Destination.RunAs, limits(ma), ma.Spec.Destination.InPlace)
	s := d.states.of(ma)
	s.mu.Lock()
	served, ep := s.served, s.endpoint
	s.mu.Unlock()
	if served == fingerprint {
		return ep, nil
	}
	d.server.Remove(id)
	dest := endpoint.Destination{ID: id, Keys: keys, Volume: path, Dir: "/", Privileged: privileged, RunAs: runAs(ma), Limits: limits(ma),
		InPlace:        ma.Spec.Destination.InPlace,
		HoldOnShutdown: true, Events: func(e endpoint.Event) { d.onEvent(key, e) }}
	// After a restart, listen where the controller's Service points;
	// otherwise on the first free port of the range.
	var prev int32
	if ep := ma.Status.Endpoint; ep != nil {
		prev = ep.Port
	}
	var addr net.Addr
	var err error
	for _, port := range d.cfg.Ports.Candidates(prev) {
		dest.ListenAddr = net.JoinHostPort(d.cfg.SSHBindAddress, strconv.Itoa(int(port)))
		if addr, err = d.server.Add(dest); err == nil {
			break
		}
	}
	if addr == nil {
		errorsTotal.WithLabelValues(d.labels(ma, agentv1alpha1.CauseEndpoint)...).Inc()
		return nil, fmt.Errorf("serve destination: no free port in the node's range %s (--ssh-port-range): %w", d.cfg.Ports, err)
	}
	ep = &agentv1alpha1.Endpoint{Address: d.cfg.SSHAdvertiseAddress, Port: int32(addr.(*net.TCPAddr).Port)}
	d.events.Eventf(ma, nil, corev1.EventTypeNormal, agentv1alpha1.ReasonServing, "Serve", "the volume is mounted at %s and accepts syncs on %s:%d", path, ep.Address, ep.Port)
	s.mu.Lock()
	s.served, s.path, s.endpoint = fingerprint, path, ep
	s.mu.Unlock()
	return ep, nil
}

// onEvent carries out what the tracker makes of an endpoint event: metrics,
// at a sync's end the flush, the hold and the result, and the status write
// (redelivered while the apiserver is away).
func (d *destinationServer) onEvent(key types.NamespacedName, e endpoint.Event) {
	ctx := log.IntoContext(d.ctx, log.FromContext(d.ctx).WithValues("assignment", key, "event", e.Kind))
	logger := log.FromContext(ctx)
	ma := &agentv1alpha1.MountAssignment{}
	if err := d.cache.Get(ctx, key, ma); err != nil {
		logger.Error(err, "destination event for an assignment not in the cache")
		return
	}
	s := d.states.of(ma)
	s.mu.Lock()
	defer s.mu.Unlock()
	start := s.syncs.start
	st := s.syncs.observe(e, ma.Spec.SyncGeneration, func(needed int64) string { return noSpace(ma, s.path, needed) })
	d.count(ma, e, start)
	if res := st.ended; res != nil {
		if res.Succeeded {
			if err := syncfs(s.path); err != nil {
				res.Succeeded, res.Error = false, err.Error()
			}
		}
		if !res.Succeeded {
			if why := volumeLost(s.path); why != "" {
				res.Error = why + ": " + res.Error
			}
		}
		// The endpoint held the volume at `shutdown 0`; a sync that did
		// not end well is not held.
		d.server.Hold(key.String(), res.Succeeded)
		d.syncEnded(logger, ma, res)
		s.unreported = res // until the write below lands
	}
	if st.mutate == nil {
		return
	}
	if err := d.status.update(ctx, key, func(ma *agentv1alpha1.MountAssignment) {
		s.applyUnreported(ma)
		st.mutate(ma)
	}); err != nil {
		logger.Error(err, "report destination event")
	} else {
		s.unreported = nil
	}
	if s.unreported != nil && !s.redelivering {
		s.redelivering = true
		go d.redeliver(ctx, key, s)
	}
}

// count adds an endpoint event to the node's metrics; start is when the
// sync the event belongs to began.
func (d *destinationServer) count(ma *agentv1alpha1.MountAssignment, e endpoint.Event, start time.Time) {
	switch e.Kind {
	case endpoint.RsyncStarted:
		activeTransfers.WithLabelValues(d.cfg.NodeName, "destination").Inc()
	case endpoint.RsyncEnded:
		activeTransfers.WithLabelValues(d.cfg.NodeName, "destination").Dec()
		bytesTotal.WithLabelValues(d.labels(ma, "received")...).Add(float64(e.BytesReceived))
		bytesTotal.WithLabelValues(d.labels(ma, "sent")...).Add(float64(e.BytesSent))
		switch {
		case e.OOMKilled:
			errorsTotal.WithLabelValues(d.labels(ma, agentv1alpha1.CauseOOMKilled)...).Inc()
		case e.ExitCode != 0:
			errorsTotal.WithLabelValues(d.labels(ma, agentv1alpha1.CauseTransfer)...).Inc()
		}
	case endpoint.SyncEnded:
		if !start.IsZero() {
			transferSeconds.WithLabelValues(d.labels(ma)...).Observe(e.Time.Sub(start).Seconds())
		}
	case endpoint.Refused:
		errorsTotal.WithLabelValues(d.labels(ma, agentv1alpha1.CauseRefusedRequest)...).Inc()
		d.log.Info("refused a request", "assignment", client.ObjectKeyFromObject(ma), "reason", e.Message)
	}
}

// applyUnreported writes the end of a sync not in the status yet into an
// assignment's status (the same object's only: not one recreated under the
// name since).
func (s *destinationState) applyUnreported(ma *agentv1alpha1.MountAssignment) {
	if s.unreported != nil && ma.UID == s.uid {
		applyEnd(ma, s.unreported)
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
func (d *destinationServer) redeliver(ctx context.Context, key types.NamespacedName, s *destinationState) {
	delay := redeliverFirst
	for {
		select {
		case <-time.After(delay):
		case <-d.aborted:
			return
		}
		s.mu.Lock()
		if s.unreported == nil {
			s.redelivering = false
			s.mu.Unlock()
			return
		}
		err := d.status.update(ctx, key, s.applyUnreported)
		if err == nil || apierrors.IsNotFound(err) {
			log.FromContext(ctx).Info("reported a sync's end the apiserver missed", "generation", s.unreported.Generation, "error", err)
			s.unreported, s.redelivering = nil, false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		delay = min(2*delay, redeliverMax)
	}
}

// drainPoll is how often drain looks whether the sources are gone.
const drainPoll = 100 * time.Millisecond

// drain waits up to grace for the sources connected to this node's
// destinations to finish their syncs: at shutdown the syncs arriving get
// the grace period, as the ones leaving do. What is still connected then is
// cut when the endpoint closes, and its end reported (d.ctx outlives the
// manager).
func (d *destinationServer) drain(grace time.Duration) {
	over := time.After(grace)
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	for d.server.Connected() > 0 {
		select {
		case <-over:
			d.log.Info("grace period over; cutting the syncs arriving")
			return
		case <-tick.C:
		}
	}
}
