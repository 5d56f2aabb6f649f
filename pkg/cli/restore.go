package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
)

func newRestoreCommand(o *options) *cobra.Command {
	var claim, storageClass string
	var populator bool
	cmd := &cobra.Command{
		Use:   "restore NAME --to-claim CLAIM",
		Short: "A new claim in the destination's cluster from a ReplicationDestination's latest image",
		Long: "restore creates CLAIM in the destination's namespace from the latest image of the\n" +
			"ReplicationDestination NAME: a claim restored from its VolumeSnapshot (or cloned from its\n" +
			"claim, for copyMethod Direct), sized as the destination. With --populator the claim names the\n" +
			"ReplicationDestination as its dataSourceRef instead, and is filled by the volume populator\n" +
			"once an image exists.",
		Example: "  kubectl ferry restore mysql-pv-claim --to-context dr --to-namespace dest --to-claim mysql-restored",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.restore(cmd.Context(), args[0], claim, storageClass, populator)
		},
	}
	cmd.Flags().StringVar(&claim, "to-claim", "", "the new claim's name")
	cmd.Flags().StringVar(&storageClass, "storage-class", "", "the new claim's storage class (default: the destination's)")
	cmd.Flags().BoolVar(&populator, "populator", false, "fill the claim through the volume populator instead of from the image")
	_ = cmd.MarkFlagRequired("to-claim")
	return cmd
}

// restore reads the destination and creates the claim.
func (o *options) restore(ctx context.Context, name, claim, storageClass string, populator bool) error {
	s, err := o.sides()
	if err != nil {
		return err
	}
	c, ns := s.dst, s.dstNS
	rd := &volsyncv1alpha1.ReplicationDestination{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, rd); err != nil {
		return fmt.Errorf("replicationdestination %s/%s: %w", ns, name, err)
	}
	pvc, err := restoreClaim(rd, claim, storageClass, populator)
	if err != nil {
		return err
	}
	if err := c.Create(ctx, pvc); err != nil {
		return fmt.Errorf("create claim %s/%s: %w", ns, claim, err)
	}
	from := fmt.Sprintf("%s %s", pvc.Spec.DataSourceRef.Kind, pvc.Spec.DataSourceRef.Name)
	fmt.Fprintf(o.streams.Out, "persistentvolumeclaim %s/%s: created from %s\n", ns, claim, from)
	return nil
}

// restoreClaim is the claim that restores rd's latest image (or, with
// populator, that the populator fills).
func restoreClaim(rd *volsyncv1alpha1.ReplicationDestination, name, storageClass string, populator bool) (*corev1.PersistentVolumeClaim, error) {
	opts := volsyncv1alpha1.ReplicationDestinationVolumeOptions{}
	if rd.Spec.Rsync != nil {
		opts = rd.Spec.Rsync.ReplicationDestinationVolumeOptions
	}
	var source *corev1.TypedObjectReference
	switch {
	case populator:
		source = &corev1.TypedObjectReference{APIGroup: ptr.To(volsyncv1alpha1.GroupVersion.Group), Kind: "ReplicationDestination", Name: rd.Name}
	case rd.Status.LatestImage == nil:
		return nil, fmt.Errorf("replicationdestination %s/%s has no image yet (status.latestImage): wait for its first sync, or use --populator", rd.Namespace, rd.Name)
	default:
		img := rd.Status.LatestImage
		source = &corev1.TypedObjectReference{APIGroup: img.APIGroup, Kind: img.Kind, Name: img.Name}
	}
	size := resource.MustParse("1Gi")
	if opts.Capacity != nil {
		size = *opts.Capacity
	}
	modes := opts.AccessModes
	if len(modes) == 0 {
		modes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	}
	class := opts.StorageClassName
	if storageClass != "" {
		class = ptr.To(storageClass)
	}
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: rd.Namespace, Name: name, Labels: map[string]string{"app.kubernetes.io/managed-by": ManagedBy}},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: modes, StorageClassName: class, DataSourceRef: source,
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size}}},
	}, nil
}
