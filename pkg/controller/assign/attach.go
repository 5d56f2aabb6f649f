package assign

import (
	"context"
	"fmt"

	storagev1 "k8s.io/api/storage/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	"github.com/ferrysync/ferry/pkg/csi"
)

// AttachRequired reads the CSIDriver's attachRequired; a driver without a
// CSIDriver object requires attach, as Kubernetes assumes.
func AttachRequired(ctx context.Context, c client.Reader, driver string) (bool, error) {
	d := &storagev1.CSIDriver{}
	if err := c.Get(ctx, client.ObjectKey{Name: driver}, d); err != nil {
		if client.IgnoreNotFound(err) == nil {
			return true, nil
		}
		return false, fmt.Errorf("get CSIDriver %s: %w", driver, err)
	}
	return d.Spec.AttachRequired == nil || *d.Spec.AttachRequired, nil
}

// Attach attaches the volume to node when its driver requires it and
// returns the attachment for the assignment once it is attached (nil while
// it is not, or when the driver needs none: attached says which).
func Attach(ctx context.Context, c client.Client, v agentv1alpha1.Volume, node string) (a *agentv1alpha1.Attachment, attached bool, err error) {
	required, err := AttachRequired(ctx, c, v.Driver)
	if err != nil || !required {
		return nil, !required, err
	}
	va, err := csi.Attach(ctx, c, v.Driver, v.VolumeHandle, v.PersistentVolumeName, node)
	if err != nil {
		return nil, false, err
	}
	md, ok, err := csi.Attached(va)
	if err != nil || !ok {
		return nil, false, err
	}
	return &agentv1alpha1.Attachment{Name: va.Name, UID: string(va.UID), Metadata: md}, true, nil
}

// Detach deletes Ferry's attachments of a PV to every node but keep (""
// for all). Call it once no assignment mounts the volume there.
func Detach(ctx context.Context, c client.Client, pv, keep string) error {
	list := &storagev1.VolumeAttachmentList{}
	if err := c.List(ctx, list, client.MatchingLabels{csi.ManagedByLabel: csi.ManagedBy}); err != nil {
		return fmt.Errorf("list VolumeAttachments: %w", err)
	}
	for _, va := range list.Items {
		src := va.Spec.Source.PersistentVolumeName
		if src == nil || *src != pv || va.Spec.NodeName == keep {
			continue
		}
		if err := client.IgnoreNotFound(c.Delete(ctx, &va)); err != nil {
			return fmt.Errorf("detach %s from %s: %w", pv, va.Spec.NodeName, err)
		}
	}
	return nil
}
