package assign

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// ClaimIndex indexes cached pods by the claims they use.
const ClaimIndex = "ferrysync.io/claims"

// ClaimsOf are the claims a pod uses.
func ClaimsOf(pod *corev1.Pod) []string {
	var out []string
	for _, v := range pod.Spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			out = append(out, v.PersistentVolumeClaim.ClaimName)
		}
	}
	return out
}

// IndexPodsByClaim registers ClaimIndex with the manager's cache.
func IndexPodsByClaim(ctx context.Context, indexer client.FieldIndexer) error {
	if err := indexer.IndexField(ctx, &corev1.Pod{}, ClaimIndex, func(o client.Object) []string {
		return ClaimsOf(o.(*corev1.Pod))
	}); err != nil {
		return fmt.Errorf("index pods by claim: %w", err)
	}
	return nil
}

// TrimPod is the cache's transform for pods: only what placement and the
// two-writers check read (name, node, phase, claims), so that caching every
// pod of a cluster costs little.
func TrimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	trimmed := &corev1.Pod{}
	trimmed.Name, trimmed.Namespace, trimmed.UID, trimmed.ResourceVersion = pod.Name, pod.Namespace, pod.UID, pod.ResourceVersion
	trimmed.DeletionTimestamp = pod.DeletionTimestamp
	trimmed.Spec.NodeName = pod.Spec.NodeName
	for _, v := range pod.Spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			trimmed.Spec.Volumes = append(trimmed.Spec.Volumes, corev1.Volume{Name: v.Name,
				VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: v.PersistentVolumeClaim}})
		}
	}
	trimmed.Status.Phase = pod.Status.Phase
	return trimmed, nil
}

// PodsUsing lists the pods in ns that use claim and have not ended, from
// the cache (c must have ClaimIndex).
func PodsUsing(ctx context.Context, c client.Reader, ns, claim string) ([]corev1.Pod, error) {
	pods := &corev1.PodList{}
	if err := c.List(ctx, pods, client.InNamespace(ns), client.MatchingFields{ClaimIndex: claim}); err != nil {
		return nil, fmt.Errorf("list pods using claim %s: %w", claim, err)
	}
	var out []corev1.Pod
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			out = append(out, p)
		}
	}
	return out, nil
}

// UsedOn is the node where a running pod uses the claim ("" for none),
// from the cache (c must have ClaimIndex).
func UsedOn(ctx context.Context, c client.Reader, ns, claim string) (string, error) {
	pods, err := PodsUsing(ctx, c, ns, claim)
	if err != nil {
		return "", err
	}
	for _, p := range pods {
		if p.Spec.NodeName != "" && p.Status.Phase == corev1.PodRunning {
			return p.Spec.NodeName, nil
		}
	}
	return "", nil
}
