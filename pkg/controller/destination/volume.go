package destination

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/assign"
	"github.com/ferrysync/ferry/pkg/controller/cycle"
	"github.com/ferrysync/ferry/pkg/controller/names"
)

// managedBy marks the EndpointSlices this controller keeps, as the
// EndpointSlice API asks of every controller that writes them.
const managedBy = "controller.ferrysync.io"

// portName names the ssh port on the Service and its EndpointSlice.
const portName = "rsync"

// claimName is the destination volume's claim: spec.rsync.destinationPVC,
// or the one Ferry provisions, named as VolSync names it.
func claimName(rd *volsyncv1alpha1.ReplicationDestination) string {
	if rd.Spec.Rsync != nil && rd.Spec.Rsync.DestinationPVC != nil {
		return *rd.Spec.Rsync.DestinationPVC
	}
	return names.Object("volsync-", rd.Name, "-dst")
}

// volume finds or provisions the destination claim and returns its PV once
// bound (nil, with w.waiting set, before).
func (w *work) volume(ctx context.Context) (*corev1.PersistentVolume, error) {
	rd, c := w.rd, w.r.Client
	spec := rd.Spec.Rsync
	name := claimName(rd)
	pvc := &corev1.PersistentVolumeClaim{}
	err := c.Get(ctx, client.ObjectKey{Namespace: rd.Namespace, Name: name}, pvc)
	switch {
	case apierrors.IsNotFound(err) && spec.DestinationPVC != nil:
		return nil, cycle.Invalidf("spec.rsync.destinationPVC %q does not exist in namespace %s: create it, or remove the field and set capacity and accessModes to have one provisioned",
			name, rd.Namespace)
	case apierrors.IsNotFound(err):
		if err := checkClass(ctx, c, spec.StorageClassName); err != nil {
			return nil, err
		}
		pvc = newClaim(rd, name)
		if err := controllerutil.SetControllerReference(rd, pvc, c.Scheme()); err != nil {
			return nil, fmt.Errorf("own claim %s: %w", name, err)
		}
		if err := c.Create(ctx, pvc); err != nil {
			return nil, fmt.Errorf("create claim %s: %w", name, err)
		}
	case err != nil:
		return nil, fmt.Errorf("get claim %s: %w", name, err)
	}
	w.pvc = pvc
	if pvc.DeletionTimestamp != nil {
		// Nothing is mounted from a claim on its way out (one that
		// cleanupTempPVC dropped is provisioned anew once gone).
		w.waiting = fmt.Sprintf("waiting for claim %s, which is being deleted, to go", name)
		return nil, nil
	}
	var prefer string
	if w.ma != nil {
		prefer = w.ma.Spec.NodeName
	}
	bound, err := assign.SelectNode(ctx, c, pvc, nil, prefer)
	if err != nil {
		if errors.Is(err, assign.ErrNoNode) {
			return nil, cycle.Invalid(err)
		}
		return nil, err
	}
	if !bound {
		if err := checkClass(ctx, c, pvc.Spec.StorageClassName); err != nil {
			return nil, err
		}
		w.waiting = fmt.Sprintf("waiting for claim %s to be bound", name)
		return nil, nil
	}
	pv := &corev1.PersistentVolume{}
	if err := c.Get(ctx, client.ObjectKey{Name: pvc.Spec.VolumeName}, pv); err != nil {
		return nil, fmt.Errorf("get volume of claim %s: %w", name, err)
	}
	return pv, nil
}

// newClaim is the claim Ferry provisions from capacity, accessModes,
// storageClassName and volumeMode.
func newClaim(rd *volsyncv1alpha1.ReplicationDestination, name string) *corev1.PersistentVolumeClaim {
	spec := rd.Spec.Rsync
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: rd.Namespace, Name: name},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: spec.AccessModes, StorageClassName: spec.StorageClassName,
			VolumeMode: spec.VolumeMode}}
	if spec.Capacity != nil {
		pvc.Spec.Resources.Requests = corev1.ResourceList{corev1.ResourceStorage: *spec.Capacity}
	}
	return pvc
}

// checkClass says, for a claim that waits, whether its storage class is
// missing: a claim of a class that does not exist is never bound.
func checkClass(ctx context.Context, c client.Reader, name *string) error {
	if name == nil || *name == "" {
		return nil
	}
	err := c.Get(ctx, client.ObjectKey{Name: *name}, &storagev1.StorageClass{})
	if apierrors.IsNotFound(err) {
		return cycle.Invalidf("storage class %q (spec.rsync.storageClassName) does not exist: name an existing StorageClass", *name)
	}
	if err != nil {
		return fmt.Errorf("get storage class %s: %w", *name, err)
	}
	return nil
}

// transferring says whether data is moving into the volume now.
func transferring(ma *agentv1alpha1.MountAssignment) bool {
	return ma != nil && ma.Transferring()
}
