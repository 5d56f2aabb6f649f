package assign

// Ferry's VolumeAttachments. Why they are named "ferry-" + the hash
// kubelet's attach-detach controller would use ("csi-" + the same hash):
// found by running a real kube-controller-manager (v1.37) against a real
// external-attacher and restarting it
// (TestAttachAcrossControllerManagerRestart): on start its attach-detach
// controller marks every VolumeAttachment "uncertain" and detaches those of
// its own naming that no pod needs as soon as the node's status comes
// without them in volumesInUse; one of another name is left alone. A
// volume detached anyway (a person, a drain tool) is attached again by
// Attach with a new UID, and the agent publishes it anew.

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	storagev1 "k8s.io/api/storage/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
)

// AttachRequired reads the driver's CSIDriver and applies the assignment
// API's rule (agentv1alpha1.AttachRequired), which the agent applies too.
func AttachRequired(ctx context.Context, c client.Reader, driver string) (bool, error) {
	d := &storagev1.CSIDriver{}
	if err := c.Get(ctx, client.ObjectKey{Name: driver}, d); err != nil {
		if client.IgnoreNotFound(err) != nil {
			return false, fmt.Errorf("get CSIDriver %s: %w", driver, err)
		}
		d = nil
	}
	return agentv1alpha1.AttachRequired(d), nil
}

// Attach attaches the volume to node when its driver requires it and
// returns the attachment for the assignment once it is attached (nil while
// it is not, or when the driver needs none: attached says which). A node
// has one attachment per volume where it can: Ferry's own if it has one,
// else kubelet's (a pod there uses the volume), else Ferry makes its own.
func Attach(ctx context.Context, c client.Client, v agentv1alpha1.Volume, node string) (a *agentv1alpha1.Attachment, attached bool, err error) {
	required, err := AttachRequired(ctx, c, v.Driver)
	if err != nil || !required {
		return nil, !required, err
	}
	va, err := attachment(ctx, c, v.Driver, v.VolumeHandle, v.PersistentVolumeName, node)
	if err != nil {
		return nil, false, err
	}
	md, ok, err := Attached(va)
	if err != nil || !ok {
		return nil, false, err
	}
	return &agentv1alpha1.Attachment{Name: va.Name, UID: string(va.UID), Metadata: md}, true, nil
}

// kubeletAttachment is the attach-detach controller's attachment of a
// volume to node, if it has one that is not being deleted.
func kubeletAttachment(ctx context.Context, c client.Reader, driver, handle, node string) (*storagev1.VolumeAttachment, error) {
	va := &storagev1.VolumeAttachment{}
	err := c.Get(ctx, client.ObjectKey{Name: KubeletAttachmentName(driver, handle, node)}, va)
	if apierrors.IsNotFound(err) || (err == nil && va.DeletionTimestamp != nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get kubelet's attachment of %s to %s: %w", handle, node, err)
	}
	return va, nil
}

// DetachClaim deletes Ferry's attachments of the PV a claim is bound to;
// a claim that is gone or not bound has none.
func DetachClaim(ctx context.Context, c client.Client, namespace, claim string) error {
	pvc := &corev1.PersistentVolumeClaim{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: claim}, pvc); err != nil {
		if client.IgnoreNotFound(err) == nil {
			return nil
		}
		return fmt.Errorf("get claim %s: %w", claim, err)
	}
	if pvc.Spec.VolumeName == "" {
		return nil
	}
	return Detach(ctx, c, pvc.Spec.VolumeName)
}

// Detach deletes Ferry's attachments of a PV, to whatever node. Call it
// once no assignment mounts the volume. Where kubelet has its own
// attachment of the volume to the same node (a pod there uses it), Ferry's
// is handed over instead: deleted without the external-attacher's
// ControllerUnpublishVolume, which it would answer the deletion with, and
// which detaches the disk from the node (EBS) or drops the attachment
// ticket kubelet's shares (Longhorn names its ticket as kubelet names its
// attachment) under the pod.
func Detach(ctx context.Context, c client.Client, pv string) error {
	list := &storagev1.VolumeAttachmentList{}
	if err := c.List(ctx, list, client.MatchingLabels{ManagedByLabel: ManagedBy}); err != nil {
		return fmt.Errorf("list VolumeAttachments: %w", err)
	}
	for _, va := range list.Items {
		src := va.Spec.Source.PersistentVolumeName
		if src == nil || *src != pv {
			continue
		}
		if err := detach(ctx, c, &va); err != nil {
			return fmt.Errorf("detach %s from %s: %w", pv, va.Spec.NodeName, err)
		}
	}
	return nil
}

// detach deletes one of Ferry's attachments, handing it over where kubelet
// has its own of the same volume to the same node.
func detach(ctx context.Context, c client.Client, va *storagev1.VolumeAttachment) error {
	pv := &corev1.PersistentVolume{}
	if err := c.Get(ctx, client.ObjectKey{Name: *va.Spec.Source.PersistentVolumeName}, pv); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("get its PersistentVolume: %w", err)
	}
	if pv.Spec.CSI != nil {
		kubelets, err := kubeletAttachment(ctx, c, va.Spec.Attacher, pv.Spec.CSI.VolumeHandle, va.Spec.NodeName)
		if err != nil {
			return err
		}
		if kubelets != nil && handOver(va) {
			if err := c.Update(ctx, va); err != nil {
				return fmt.Errorf("hand over to kubelet's attachment %s: %w", kubelets.Name, client.IgnoreNotFound(err))
			}
		}
	}
	return client.IgnoreNotFound(c.Delete(ctx, va))
}

// handOver drops the external-attacher's finalizer from an attachment, so
// that deleting it calls no ControllerUnpublishVolume: the attacher leaves
// an attached attachment alone (syncAttach returns at once) and detaches
// on deletion only what bears its finalizer (syncDetach: "already
// detached"), in external-attacher v4.13.0's pkg/controller/csi_handler.go,
// lines 255-261 and 286-291. It says whether there was one to drop.
func handOver(va *storagev1.VolumeAttachment) bool {
	n := len(va.Finalizers)
	va.Finalizers = slices.DeleteFunc(va.Finalizers, func(f string) bool { return strings.HasPrefix(f, "external-attacher/") })
	return len(va.Finalizers) != n
}

// ManagedByLabel marks the VolumeAttachments Ferry created, the only ones
// Detach deletes.
const ManagedByLabel = "app.kubernetes.io/managed-by"

// ManagedBy is the label's value.
const ManagedBy = "ferry"

// KubeletAttachmentName is the name kubelet's attach-detach controller
// gives its attachment of a volume to a node: "csi-" +
// sha256(handle + driver + node) (getAttachmentName,
// pkg/volume/csi/csi_attacher.go, v1.37.2, lines 592-596).
func KubeletAttachmentName(driver, volumeHandle, node string) string {
	return fmt.Sprintf("csi-%x", sha256.Sum256([]byte(volumeHandle+driver+node)))
}

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

// attachment makes sure a VolumeAttachment of PersistentVolume pv to node
// exists and returns it; Attached says when it can be used. It is Ferry's
// own if Ferry has one there, else kubelet's if a pod there has one, else
// Ferry's, made now. While Ferry's is being deleted it returns
// ErrDetaching: call again, and a new one is created once the old one is
// gone.
func attachment(ctx context.Context, c client.Client, driver, volumeHandle, pv, node string) (*storagev1.VolumeAttachment, error) {
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
	if kubelets, err := kubeletAttachment(ctx, c, driver, volumeHandle, node); err != nil || kubelets != nil {
		return kubelets, err
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
