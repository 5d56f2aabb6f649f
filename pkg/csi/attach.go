package csi

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// ManagedByLabel marks the VolumeAttachments Ferry created, the only ones
// Detach deletes.
const ManagedByLabel = "app.kubernetes.io/managed-by"

// ManagedBy is the label's value.
const ManagedBy = "ferry"

// ErrDetaching says the attachment is being deleted (see the package doc
// for who does that); once it is gone, Attach creates it again.
var ErrDetaching = errors.New("the volume attachment is being detached")

// AttachmentName names Ferry's attachment of a volume (by its CSI volume
// handle) to a node. It is deliberately not the name kubelet's
// attach-detach controller gives the same attachment ("csi-" and the same
// hash): that controller deletes attachments of its own naming that no pod
// needs whenever it restarts (see the package doc), and one of Ferry's
// naming it leaves alone.
func AttachmentName(driver, volumeHandle, node string) string {
	return fmt.Sprintf("ferry-%x", sha256.Sum256([]byte(volumeHandle+driver+node)))
}

// Attach makes sure a VolumeAttachment of PersistentVolume pv to node
// exists and returns it; Attached says when it can be used. While the
// attachment is being deleted it returns ErrDetaching: call again, and a
// new one is created once the old one is gone.
func Attach(ctx context.Context, c client.Client, driver, volumeHandle, pv, node string) (*storagev1.VolumeAttachment, error) {
	name := AttachmentName(driver, volumeHandle, node)
	va := &storagev1.VolumeAttachment{}
	err := c.Get(ctx, client.ObjectKey{Name: name}, va)
	switch {
	case err == nil:
		if va.DeletionTimestamp != nil {
			return nil, fmt.Errorf("attachment %s of %s to %s: %w", name, pv, node, ErrDetaching)
		}
		return va, nil
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("get attachment %s of %s to %s: %w", name, pv, node, err)
	}
	va = &storagev1.VolumeAttachment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{ManagedByLabel: ManagedBy}},
		Spec: storagev1.VolumeAttachmentSpec{Attacher: driver, NodeName: node,
			Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &pv}},
	}
	if err := c.Create(ctx, va); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create attachment of %s to %s: %w", pv, node, err)
	}
	return va, nil
}

// Attached says whether the attachment is done, with the publish context
// for the node plugin; an error the attacher reported comes back as one.
func Attached(va *storagev1.VolumeAttachment) (map[string]string, bool, error) {
	if va.Status.Attached {
		return va.Status.AttachmentMetadata, true, nil
	}
	if e := va.Status.AttachError; e != nil {
		return nil, false, fmt.Errorf("attach %s: %s", va.Name, e.Message)
	}
	return nil, false, nil
}

// WaitAttached attaches and waits until the attachment is done, re-creating
// it if it is deleted meanwhile. Attach errors the attacher reports are
// retried too (it retries them itself) until ctx ends.
func WaitAttached(ctx context.Context, c client.Client, driver, volumeHandle, pv, node string) (*storagev1.VolumeAttachment, error) {
	var va *storagev1.VolumeAttachment
	var last error
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		var err error
		if va, err = Attach(ctx, c, driver, volumeHandle, pv, node); err != nil {
			last = err
			return false, nil
		}
		_, ok, err := Attached(va)
		last = err
		return ok, nil
	})
	if err != nil {
		return nil, fmt.Errorf("wait for %s to attach to %s: %w (last: %v)", pv, node, err, last)
	}
	return va, nil
}

// Detach deletes Ferry's attachment. Detaching detaches the volume from the
// node even if a pod there has attached it too (two attachments of one
// volume to one node are one attachment to the driver), so the caller makes
// sure no pod on the node uses the volume.
func Detach(ctx context.Context, c client.Client, driver, volumeHandle, node string) error {
	va := &storagev1.VolumeAttachment{}
	err := c.Get(ctx, client.ObjectKey{Name: AttachmentName(driver, volumeHandle, node)}, va)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("get attachment of %s to %s: %w", volumeHandle, node, err)
	}
	if va.Labels[ManagedByLabel] != ManagedBy {
		return nil
	}
	if err := c.Delete(ctx, va, client.Preconditions{UID: &va.UID}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("detach %s from %s: %w", volumeHandle, node, err)
	}
	return nil
}
