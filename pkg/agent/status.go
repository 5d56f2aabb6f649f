package agent

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
)

// statusWriter writes what the agent did into an assignment's status. The
// reconciler, transfer goroutines and endpoint events all write status,
// each its own fields, so every write applies its change to the latest
// object.
type statusWriter interface {
	update(ctx context.Context, key types.NamespacedName, mutate func(*agentv1alpha1.MountAssignment)) error
}

// statusTimeout bounds one status write.
const statusTimeout = 15 * time.Second

// apiStatus writes status through the apiserver: a fresh read, the change,
// an update, again on a conflict.
type apiStatus struct {
	api    client.Reader
	writer client.StatusClient
}

// update applies mutate to the assignment's latest status and writes it.
// The write keeps ctx's values (the logger) but not its end: a transfer
// aborted at shutdown, whose context has ended, must still report that it
// was; statusTimeout bounds it instead.
func (s apiStatus) update(ctx context.Context, key types.NamespacedName, mutate func(*agentv1alpha1.MountAssignment)) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), statusTimeout)
	defer cancel()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		ma := &agentv1alpha1.MountAssignment{}
		if err := s.api.Get(ctx, key, ma); err != nil {
			return err
		}
		before := ma.Status.DeepCopy()
		mutate(ma)
		if equality.Semantic.DeepEqual(before, &ma.Status) {
			return nil
		}
		return s.writer.Status().Update(ctx, ma)
	})
	if err != nil {
		return fmt.Errorf("update status of %s: %w", key, err)
	}
	return nil
}

// setReady sets the Ready condition.
func setReady(ma *agentv1alpha1.MountAssignment, ok bool, reason, message string) {
	status := metav1.ConditionFalse
	if ok {
		status = metav1.ConditionTrue
	}
	meta.SetStatusCondition(&ma.Status.Conditions, metav1.Condition{Type: agentv1alpha1.ConditionReady, Status: status,
		Reason: reason, Message: message, ObservedGeneration: ma.Generation})
	ma.Status.ObservedGeneration = ma.Generation
}

// cleanupTimeout bounds taking a volume down after a sync, also when the
// sync's own context has ended (an aborted transfer still unmounts).
const cleanupTimeout = 2 * time.Minute

// cleanupContext is for undoing what a sync did: it keeps ctx's values (the
// logger) but not its end, and is bounded by cleanupTimeout.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}

// now is metav1.Now as a pointer, for the status' optional times.
func now() *metav1.Time { t := metav1.Now(); return &t }

// timePtr turns a time into the status' optional time; zero is unset.
func timePtr(t time.Time) *metav1.Time {
	if t.IsZero() {
		return nil
	}
	mt := metav1.NewTime(t)
	return &mt
}
