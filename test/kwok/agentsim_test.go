package kwok_test

import (
	"context"
	"fmt"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/test/harness"
)

// Indexes the simulator finds a source's destination by: the
// destination's address, and the assignment of a CR.
const (
	addressIndex = "status.rsync.address"
	ownerIndex   = "spec.owner.uid"
)

// agentSim carries out every node's assignments the way the agents report
// them, without mounting or moving anything: a destination is Mounted with
// an endpoint, takes a sync and holds until the controller raises the
// generation; a source waits for one of its node's transfer slots (Queued),
// is Transferring for delay, then ends, after writing the destination's
// end of the same sync, or retries while the destination still holds the
// last one (as a real source is refused). It writes one status per step, as
// the agent does for a sync shorter than its progress interval.
type agentSim struct {
	c     client.Client
	delay time.Duration
	slots int

	mu    sync.Mutex
	busy  map[string]int    // node → slots taken
	where map[string]string // source → the node whose slot it holds
}

// startAgentSim runs the simulator until ctx ends.
func startAgentSim(ctx context.Context, mgr ctrl.Manager, delay time.Duration, slots int) error {
	s := &agentSim{c: mgr.GetClient(), delay: delay, slots: slots, busy: map[string]int{}, where: map[string]string{}}
	idx := mgr.GetFieldIndexer()
	if err := idx.IndexField(ctx, &volsyncv1alpha1.ReplicationDestination{}, addressIndex, func(o client.Object) []string {
		rd := o.(*volsyncv1alpha1.ReplicationDestination)
		if rd.Status.Rsync == nil || rd.Status.Rsync.Address == nil {
			return nil
		}
		return []string{*rd.Status.Rsync.Address}
	}); err != nil {
		return fmt.Errorf("index destinations: %w", err)
	}
	if err := idx.IndexField(ctx, &agentv1alpha1.MountAssignment{}, ownerIndex, func(o client.Object) []string {
		return []string{o.(*agentv1alpha1.MountAssignment).Spec.Owner.UID}
	}); err != nil {
		return fmt.Errorf("index assignments: %w", err)
	}
	return ctrl.NewControllerManagedBy(mgr).Named("agentsim").For(&agentv1alpha1.MountAssignment{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: 16}).Complete(s)
}

// Reconcile moves one assignment on by one step.
func (s *agentSim) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	ma := &agentv1alpha1.MountAssignment{}
	if err := s.c.Get(ctx, req.NamespacedName, ma); err != nil || ma.DeletionTimestamp != nil {
		s.release(req.Name)
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	var after time.Duration
	var err error
	if ma.Spec.Destination != nil {
		err = s.destination(ctx, ma)
	} else {
		after, err = s.source(ctx, ma)
	}
	if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		return ctrl.Result{RequeueAfter: 100 * time.Millisecond}, nil
	}
	return ctrl.Result{RequeueAfter: after}, err
}

// destination publishes the volume, and accepts the next sync once the
// controller has raised the generation.
func (s *agentSim) destination(ctx context.Context, ma *agentv1alpha1.MountAssignment) error {
	st := &ma.Status
	if st.ObservedGeneration == ma.Generation && (st.Phase == agentv1alpha1.PhaseMounted || ma.Holding()) {
		return nil
	}
	st.ObservedGeneration = ma.Generation
	st.Phase = agentv1alpha1.PhaseMounted
	st.MountPath = "/simulated/" + ma.Name
	st.Endpoint = &agentv1alpha1.Endpoint{Address: nodeIP, Port: 30500}
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: agentv1alpha1.ConditionReady, Status: metav1.ConditionTrue,
		Reason: "Mounted", Message: "simulated", ObservedGeneration: ma.Generation})
	return s.c.Status().Update(ctx, ma)
}

// source runs the assignment's sync: a slot, the transfer's time, the end
// on both sides.
func (s *agentSim) source(ctx context.Context, ma *agentv1alpha1.MountAssignment) (time.Duration, error) {
	st := &ma.Status
	if ma.Ended() {
		s.release(ma.Name)
		return 0, nil
	}
	if st.CurrentSync == nil {
		if !s.take(ma.Spec.NodeName, ma.Name) {
			if st.Phase == agentv1alpha1.PhaseQueued {
				return 200 * time.Millisecond, nil
			}
			st.Phase = agentv1alpha1.PhaseQueued
			return 200 * time.Millisecond, s.c.Status().Update(ctx, ma)
		}
		st.ObservedGeneration = ma.Generation
		st.Phase = agentv1alpha1.PhaseTransferring
		st.CurrentSync = &agentv1alpha1.SyncProgress{Generation: ma.Spec.SyncGeneration, StartTime: ptrNow(), Attempt: 1}
		if err := s.c.Status().Update(ctx, ma); err != nil {
			s.release(ma.Name)
			return 0, err
		}
		return s.delay, nil
	}
	if left := s.delay - time.Since(st.CurrentSync.StartTime.Time); left > 0 {
		s.take(ma.Spec.NodeName, ma.Name) // after a restart of the simulator
		return left, nil
	}
	delivered, err := s.deliver(ctx, ma)
	if err != nil || !delivered {
		return time.Second, err // refused: the destination holds the last sync
	}
	st.LastSync = &agentv1alpha1.SyncResult{Generation: ma.Spec.SyncGeneration, Succeeded: true,
		StartTime: st.CurrentSync.StartTime, EndTime: ptrNow(), BytesSent: 1024, Summary: "simulated"}
	st.CurrentSync = nil
	st.Phase = agentv1alpha1.PhaseCompleted
	if err := s.c.Status().Update(ctx, ma); err != nil {
		return 0, err
	}
	s.release(ma.Name)
	return 0, nil
}

// deliver ends the sync on the destination's side: false while the
// destination holds the previous one.
func (s *agentSim) deliver(ctx context.Context, src *agentv1alpha1.MountAssignment) (bool, error) {
	rds := &volsyncv1alpha1.ReplicationDestinationList{}
	if err := s.c.List(ctx, rds, client.MatchingFields{addressIndex: src.Spec.Source.Address}); err != nil || len(rds.Items) != 1 {
		return false, err
	}
	mas := &agentv1alpha1.MountAssignmentList{}
	if err := s.c.List(ctx, mas, client.InNamespace(harness.Namespace), client.MatchingFields{ownerIndex: string(rds.Items[0].UID)}); err != nil || len(mas.Items) != 1 {
		return false, err
	}
	dst := &mas.Items[0]
	if dst.Holding() || dst.Status.Phase != agentv1alpha1.PhaseMounted {
		return false, nil
	}
	dst.Status.LastSync = &agentv1alpha1.SyncResult{Generation: dst.Spec.SyncGeneration, Succeeded: true,
		StartTime: src.Status.CurrentSync.StartTime, EndTime: ptrNow(), BytesReceived: 1024, Summary: "simulated"}
	dst.Status.Phase = agentv1alpha1.PhaseHolding
	if err := s.c.Status().Update(ctx, dst); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	return true, nil
}

// take claims one of node's slots for source; true if it holds one.
func (s *agentSim) take(node, source string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.where[source] != "" {
		return true
	}
	if s.busy[node] >= s.slots {
		return false
	}
	s.busy[node]++
	s.where[source] = node
	return true
}

// release frees the slot source holds, if any.
func (s *agentSim) release(source string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if node, ok := s.where[source]; ok {
		s.busy[node]--
		delete(s.where, source)
	}
}

func ptrNow() *metav1.Time {
	now := metav1.Now()
	return &now
}
