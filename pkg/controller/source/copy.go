package source

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/assign"
	"github.com/ferrysync/ferry/pkg/controller/cycle"
	"github.com/ferrysync/ferry/pkg/controller/names"
	"github.com/ferrysync/ferry/pkg/controller/snapshot"
)

// copyName is the claim the agent pushes: the live source for Direct, else
// volsync-<rs>-src, as VolSync names its temporary copy.
func (w *work) copyName() string {
	if w.rs.Spec.Rsync != nil && w.rs.Spec.Rsync.CopyMethod.IsDirect() {
		return w.rs.Spec.SourcePVC
	}
	return names.Object("volsync-", w.rs.Name, "-src")
}

// pointInTime makes the sync's copy of the source and returns its claim
// once bound (or what it waits for).
func (w *work) pointInTime(ctx context.Context) (*corev1.PersistentVolumeClaim, string, error) {
	rs, c := w.rs, w.r.Client
	spec := rs.Spec.Rsync
	src := &corev1.PersistentVolumeClaim{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: rs.Namespace, Name: rs.Spec.SourcePVC}, src); err != nil {
		return nil, "", fmt.Errorf("get source claim %s: %w", rs.Spec.SourcePVC, err)
	}
	if spec.CopyMethod.IsDirect() {
		return src, bindWait(src), nil
	}
	pvc := &corev1.PersistentVolumeClaim{}
	err := c.Get(ctx, client.ObjectKey{Namespace: rs.Namespace, Name: w.copyName()}, pvc)
	if err == nil {
		if pvc.DeletionTimestamp != nil {
			return nil, "waiting for the previous copy " + pvc.Name + " to be deleted", nil
		}
		waiting := w.checkBinding(ctx, src, pvc)
		if waiting == "" { // the copy exists: the application may go on
			if err := annotate(ctx, c, src, copyTaken(src.Annotations)); err != nil {
				return nil, "", err
			}
		}
		return pvc, waiting, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, "", fmt.Errorf("get copy %s: %w", w.copyName(), err)
	}
	if waiting, err := w.gate(ctx, src); err != nil || waiting != "" {
		return nil, waiting, err
	}
	var dataSource *corev1.TypedLocalObjectReference
	size := capacity(src)
	if spec.CopyMethod == volsyncv1alpha1.CopyMethodSnapshot {
		snap, err := snapshot.Ensure(ctx, c, rs, snapshot.Spec{Namespace: rs.Namespace, Name: w.copyName(), Claim: src.Name,
			Class: spec.VolumeSnapshotClassName, Labels: w.cleanupLabels()})
		if err != nil {
			return nil, "", err
		}
		ready, restore, err := snapshot.Ready(snap)
		if err != nil {
			return nil, "", cycle.Invalid(err)
		}
		if !ready {
			return nil, fmt.Sprintf("waiting for VolumeSnapshot %s of %s to be ready", snap.GetName(), src.Name), nil
		}
		if restore != nil && (size == nil || restore.Cmp(*size) > 0) {
			size = restore
		}
		dataSource = snapshot.Ref(snap.GetName())
	} else {
		dataSource = &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: src.Name}
	}
	pvc = copyClaim(rs, src, w.copyName(), dataSource, size)
	pvc.Labels = w.cleanupLabels()
	if err := controllerutil.SetControllerReference(rs, pvc, c.Scheme()); err != nil {
		return nil, "", fmt.Errorf("own copy %s: %w", pvc.Name, err)
	}
	if err := c.Create(ctx, pvc); err != nil {
		return nil, "", fmt.Errorf("create copy %s of %s: %w", pvc.Name, src.Name, err)
	}
	w.r.Events.Eventf(rs, nil, corev1.EventTypeNormal, EventCopyCreated, "Copy", "%s copy %s of %s created",
		spec.CopyMethod, pvc.Name, src.Name)
	return pvc, "waiting for copy " + pvc.Name + " to be bound", nil
}

// copyClaim is the claim of a Clone or Snapshot copy: the source's class,
// access modes, volume mode and size unless the spec overrides them.
func copyClaim(rs *volsyncv1alpha1.ReplicationSource, src *corev1.PersistentVolumeClaim, name string,
	dataSource *corev1.TypedLocalObjectReference, size *resource.Quantity) *corev1.PersistentVolumeClaim {
	spec := rs.Spec.Rsync
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: rs.Namespace, Name: name},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: src.Spec.AccessModes, StorageClassName: src.Spec.StorageClassName,
			VolumeMode: src.Spec.VolumeMode, DataSource: dataSource}}
	if len(spec.AccessModes) > 0 {
		pvc.Spec.AccessModes = spec.AccessModes
	}
	if spec.StorageClassName != nil {
		pvc.Spec.StorageClassName = spec.StorageClassName
	}
	if spec.VolumeMode != nil {
		pvc.Spec.VolumeMode = spec.VolumeMode
	}
	if spec.Capacity != nil {
		size = spec.Capacity
	}
	if size != nil {
		pvc.Spec.Resources.Requests = corev1.ResourceList{corev1.ResourceStorage: *size}
	}
	return pvc
}

// capacity is a claim's size: what it has, else what it asked for.
func capacity(pvc *corev1.PersistentVolumeClaim) *resource.Quantity {
	if q, ok := pvc.Status.Capacity[corev1.ResourceStorage]; ok {
		return &q
	}
	if q, ok := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; ok {
		return &q
	}
	return nil
}

func (w *work) cleanupLabels() map[string]string {
	return map[string]string{CleanupLabel: string(w.rs.UID)}
}

// checkBinding says what an unbound copy of src waits for, selecting a node
// for a WaitForFirstConsumer class: one the source's PV allows, so that a
// node-local driver (TopoLVM) can make the clone or restore there.
func (w *work) checkBinding(ctx context.Context, src, pvc *corev1.PersistentVolumeClaim) string {
	if msg := bindWait(pvc); msg == "" {
		return ""
	}
	var near *corev1.PersistentVolume
	if src.Spec.VolumeName != "" {
		near = &corev1.PersistentVolume{}
		if err := w.r.Client.Get(ctx, client.ObjectKey{Name: src.Spec.VolumeName}, near); err != nil {
			return fmt.Sprintf("copy %s cannot be bound: read the source's PersistentVolume: %v", pvc.Name, err)
		}
	}
	if _, err := assign.SelectNode(ctx, w.r.Client, pvc, near); err != nil {
		return fmt.Sprintf("copy %s cannot be bound: %v", pvc.Name, err)
	}
	if pvc.Spec.DataSource != nil && pvc.Spec.DataSource.Kind == "PersistentVolumeClaim" {
		msg := fmt.Sprintf("waiting for clone %s of %s to be bound", pvc.Name, pvc.Spec.DataSource.Name)
		if w.r.Now().Sub(pvc.CreationTimestamp.Time) > slowClone {
			msg += ": its CSI driver must support cloning (see the claim's events), or use copyMethod Snapshot"
		}
		return msg
	}
	return "waiting for copy " + pvc.Name + " to be bound"
}

func bindWait(pvc *corev1.PersistentVolumeClaim) string {
	if pvc.Status.Phase == corev1.ClaimBound && pvc.Spec.VolumeName != "" {
		return ""
	}
	return "waiting for claim " + pvc.Name + " to be bound"
}
