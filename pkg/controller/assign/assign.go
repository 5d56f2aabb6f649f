// Package assign is the controller's side of the MountAssignment contract:
// which node a volume goes to, the assignment that asks that node's agent to
// mount it (in Ferry's namespace, labelled with the CR it works for), the
// VolumeAttachment a driver that requires attach needs first, and whether
// the CR's namespace allows privileged transfers.
//
// Decisions (Place, RunAs, Limits, the assignment's spec) are pure
// functions; whether a namespace allows privileged transfers is
// volsyncv1alpha1.PrivilegedMovers, and what a status means is on the
// assignment's API type (Ended, Holding). The rest reads and writes the
// apiserver, each call idempotent.
package assign

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/keys"
	"github.com/ferrysync/ferry/pkg/controller/names"
)

// Labels on everything the controller keeps in Ferry's namespace for a CR
// (assignments, key copies), so that a change there finds its CR and a
// deleted CR finds what to remove.
const (
	LabelOwnerKind      = "ferrysync.io/owner-kind"
	LabelOwnerNamespace = "ferrysync.io/owner-namespace"
	LabelOwnerName      = "ferrysync.io/owner-name"
	LabelOwnerUID       = "ferrysync.io/owner-uid"
)

// Kinds of owner, as the assignment's spec.owner.kind names them.
const (
	KindSource      = "ReplicationSource"
	KindDestination = "ReplicationDestination"
)

// Owner is the CR an assignment works for.
type Owner struct {
	Kind string
	client.Object
}

// Labels are the owner labels.
func (o Owner) Labels() map[string]string {
	return map[string]string{LabelOwnerKind: o.Kind, LabelOwnerNamespace: o.GetNamespace(),
		LabelOwnerName: names.Label(o.GetName()), LabelOwnerUID: string(o.GetUID())}
}

// Name is the name of the owner's assignment, and of its key copy with a
// "-keys" suffix: unique per CR object (its UID), so a CR deleted and made
// again under the same name never meets its predecessor's leftovers.
func (o Owner) Name() string {
	if o.Kind == KindSource {
		return "rs-" + string(o.GetUID())
	}
	return "rd-" + string(o.GetUID())
}

// KeyCopy is where the owner's keys are mirrored for the agent: its
// KeysName in the store's namespace, with the owner's labels.
func (s Store) KeyCopy(o Owner) keys.Copy {
	return keys.Copy{Namespace: s.Namespace, Name: o.KeysName(), Labels: o.Labels()}
}

// KeysName is the name of the owner's key copy in Ferry's namespace.
func (o Owner) KeysName() string { return o.Name() + "-keys" }

// Ref is the owner as the assignment's spec names it.
func (o Owner) Ref() agentv1alpha1.OwnerReference {
	return agentv1alpha1.OwnerReference{Kind: o.Kind, Namespace: o.GetNamespace(), Name: o.GetName(), UID: string(o.GetUID())}
}

// VolumeOf names a bound claim's PV for the agent.
func VolumeOf(pv *corev1.PersistentVolume, claim string) (agentv1alpha1.Volume, error) {
	if pv.Spec.CSI == nil {
		return agentv1alpha1.Volume{}, fmt.Errorf("PersistentVolume %s of claim %s is not a CSI volume: Ferry mounts CSI volumes only", pv.Name, claim)
	}
	return agentv1alpha1.Volume{PersistentVolumeName: pv.Name, Claim: claim, Driver: pv.Spec.CSI.Driver,
		VolumeHandle: pv.Spec.CSI.VolumeHandle}, nil
}

// Store reads and writes assignments in Ferry's namespace.
type Store struct {
	// Client reads and writes. Its reads must never be older than its own
	// last write (package fresh): an assignment from before it (not yet
	// created, a sync generation not yet raised) would be written again.
	// The agent's writes come through the watch that enqueues the read.
	Client client.Client
	// Namespace is Ferry's namespace.
	Namespace string
}

// Get reads the owner's assignment; nil if there is none.
func (s Store) Get(ctx context.Context, o Owner) (*agentv1alpha1.MountAssignment, error) {
	ma := &agentv1alpha1.MountAssignment{}
	err := s.Client.Get(ctx, client.ObjectKey{Namespace: s.Namespace, Name: o.Name()}, ma)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get assignment %s: %w", o.Name(), err)
	}
	return ma, nil
}

// Ensure makes the owner's assignment say spec. An assignment for another
// node is deleted first (its node is immutable: the agent there unmounts
// before it goes); Ensure then returns nil until it is gone. The sync
// generation is never lowered.
func (s Store) Ensure(ctx context.Context, o Owner, spec agentv1alpha1.MountAssignmentSpec) (*agentv1alpha1.MountAssignment, error) {
	ma, err := s.Get(ctx, o)
	if err != nil {
		return nil, err
	}
	if ma != nil && (ma.Spec.NodeName != spec.NodeName || ma.DeletionTimestamp != nil) {
		return nil, s.Delete(ctx, ma)
	}
	if ma == nil {
		ma = &agentv1alpha1.MountAssignment{ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: o.Name(), Labels: o.Labels()}, Spec: spec}
		if err := s.Client.Create(ctx, ma); err != nil {
			return nil, fmt.Errorf("create assignment %s on node %s: %w", ma.Name, spec.NodeName, err)
		}
		return ma, s.copyCSISecrets(ctx, ma, true)
	}
	spec.SyncGeneration = max(spec.SyncGeneration, ma.Spec.SyncGeneration)
	if equality.Semantic.DeepEqual(ma.Spec, spec) {
		return ma, s.copyCSISecrets(ctx, ma, false)
	}
	ma.Spec = spec
	if err := s.Client.Update(ctx, ma); err != nil {
		return nil, fmt.Errorf("update assignment %s: %w", ma.Name, err)
	}
	// Again at each change (each sync of a source): a Secret the driver's
	// operator rotated reaches the agent by the next sync.
	return ma, s.copyCSISecrets(ctx, ma, true)
}

// Delete asks for an assignment to go; the agent's finalizer keeps it until
// the volume is unmounted. Gone already is fine.
func (s Store) Delete(ctx context.Context, ma *agentv1alpha1.MountAssignment) error {
	if ma.DeletionTimestamp != nil {
		return nil
	}
	if err := s.Client.Delete(ctx, ma, client.Preconditions{UID: &ma.UID}); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("delete assignment %s: %w", ma.Name, err)
	}
	return nil
}

// Release deletes the owner's assignment and reports whether it is gone
// (the agent has unmounted the volume).
func (s Store) Release(ctx context.Context, o Owner) (bool, error) {
	ma, err := s.Get(ctx, o)
	if err != nil || ma == nil {
		return ma == nil, err
	}
	return false, s.Delete(ctx, ma)
}

// EnqueueOwner maps an assignment to the CR of kind it works for, named
// in its spec (its owner-name label may be shortened).
func EnqueueOwner(kind string) handler.EventHandler {
	return handler.EnqueueRequestsFromMapFunc(func(_ context.Context, obj client.Object) []reconcile.Request {
		ma, ok := obj.(*agentv1alpha1.MountAssignment)
		if !ok || ma.Labels[LabelOwnerKind] != kind || ma.Spec.Owner.Name == "" {
			return nil
		}
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: ma.Spec.Owner.Namespace, Name: ma.Spec.Owner.Name}}}
	})
}

// RunAs is the user and group an unprivileged receiver runs as, from a
// CR's moverSecurityContext, as VolSync's unprivileged movers take it:
// runAsUser, and runAsGroup, else fsGroup, else the same number. Nil
// without a runAsUser, or when the namespace allows privileged movers
// (the receiver then runs as root, keeping owners). Without that
// permission uid or gid 0 is an error: files of root's, or of root's
// group, are what the permission guards.
func RunAs(psc *corev1.PodSecurityContext, privileged bool) (*agentv1alpha1.RunAs, error) {
	if privileged || psc == nil || psc.RunAsUser == nil {
		return nil, nil
	}
	r := &agentv1alpha1.RunAs{UID: *psc.RunAsUser, GID: *psc.RunAsUser}
	switch {
	case psc.RunAsGroup != nil:
		r.GID = *psc.RunAsGroup
	case psc.FSGroup != nil:
		r.GID = *psc.FSGroup
	}
	if r.UID == 0 || r.GID == 0 {
		return nil, fmt.Errorf("moverSecurityContext runs the mover as uid %d, gid %d: user or group 0 needs the namespace's "+
			"%s: \"true\" annotation; set a non-zero runAsUser, runAsGroup and fsGroup", r.UID, r.GID, volsyncv1alpha1.PrivilegedMoversAnnotation)
	}
	return r, nil
}

// Limits are the limits of a CR's moverResources that a transfer's cgroup
// takes: cpu and memory. Requests have no effect (no pod to schedule).
func Limits(mr *corev1.ResourceRequirements) corev1.ResourceList {
	if mr == nil {
		return nil
	}
	out := corev1.ResourceList{}
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if q, ok := mr.Limits[name]; ok {
			out[name] = q
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// Progress is an assignment's running sync as a CR's status.progress shows
// it; nil when none runs.
func Progress(ma *agentv1alpha1.MountAssignment) *volsyncv1alpha1.TransferProgress {
	cs := ma.Status.CurrentSync
	if cs == nil {
		return nil
	}
	return &volsyncv1alpha1.TransferProgress{Node: ma.Spec.NodeName, BytesDone: cs.BytesDone,
		FilesDone: cs.FilesDone, BytesPerSecond: cs.BytesPerSecond, Attempt: cs.Attempt}
}
