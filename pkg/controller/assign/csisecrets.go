package assign

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
)

// csiSecrets are the CSI node Secrets a PV names, by kind.
func csiSecrets(pv *corev1.PersistentVolume) map[agentv1alpha1.CSISecret]*corev1.SecretReference {
	out := map[agentv1alpha1.CSISecret]*corev1.SecretReference{}
	if src := pv.Spec.CSI; src != nil {
		if src.NodeStageSecretRef != nil {
			out[agentv1alpha1.CSIStageSecret] = src.NodeStageSecretRef
		}
		if src.NodePublishSecretRef != nil {
			out[agentv1alpha1.CSIPublishSecret] = src.NodePublishSecretRef
		}
	}
	return out
}

// copyCSISecrets copies the node-stage and node-publish Secrets of the
// assignment's PV into Ferry's namespace for its agent
// (MountAssignment.CSISecretCopy), owned by the assignment so that they go
// with it. Drivers such as ceph-csi refuse NodeStageVolume without them;
// kubelet reads them with its node's credentials, and copying them here
// spares the agents a cluster-wide read of Secrets. A PV that names none
// costs one cached read. Without refresh, a copy that is there already is
// kept (one read each).
func (s Store) copyCSISecrets(ctx context.Context, ma *agentv1alpha1.MountAssignment, refresh bool) error {
	pv := &corev1.PersistentVolume{}
	if err := s.Client.Get(ctx, client.ObjectKey{Name: ma.Spec.Volume.PersistentVolumeName}, pv); err != nil {
		return fmt.Errorf("get PersistentVolume %s for its CSI secrets: %w", ma.Spec.Volume.PersistentVolumeName, err)
	}
	for kind, ref := range csiSecrets(pv) {
		dst := &corev1.Secret{}
		if !refresh {
			err := s.Client.Get(ctx, client.ObjectKey{Namespace: s.Namespace, Name: ma.CSISecretCopy(kind)}, dst)
			if err == nil && dst.Annotations[agentv1alpha1.CSISecretAnnotation] == ref.Namespace+"/"+ref.Name {
				continue
			}
			if client.IgnoreNotFound(err) != nil {
				return fmt.Errorf("get the copy of the %s Secret of PersistentVolume %s: %w", kind, pv.Name, err)
			}
		}
		src := &corev1.Secret{}
		if err := s.Client.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, src); err != nil {
			return fmt.Errorf("read the %s Secret %s/%s of PersistentVolume %s: %w", kind, ref.Namespace, ref.Name, pv.Name, err)
		}
		dst = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: ma.CSISecretCopy(kind)}}
		_, err := controllerutil.CreateOrUpdate(ctx, s.Client, dst, func() error {
			dst.Labels = ma.Labels
			dst.Annotations = map[string]string{agentv1alpha1.CSISecretAnnotation: ref.Namespace + "/" + ref.Name}
			dst.Type, dst.Data = src.Type, src.Data
			return controllerutil.SetOwnerReference(ma, dst, s.Client.Scheme())
		})
		if err != nil {
			return fmt.Errorf("copy the %s Secret %s/%s of PersistentVolume %s: %w", kind, ref.Namespace, ref.Name, pv.Name, err)
		}
	}
	return nil
}
