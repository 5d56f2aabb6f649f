package assign

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// SelectedNodeAnnotation is how a claim of a WaitForFirstConsumer class is
// told its node when no pod will consume it: the external-provisioner
// provisions on the node the annotation names, as it does for the
// scheduler.
const SelectedNodeAnnotation = "volume.kubernetes.io/selected-node"

// ErrNoNode says no node can take the volume; the message says why.
var ErrNoNode = errors.New("no node can mount the volume")

// Place chooses the node whose agent mounts a volume of driver: a node
// whose CSINode lists the driver (its node plugin runs there), that is not
// going away, and that the PV's node affinity allows (pv may be nil before
// provisioning). Among those it takes the first of prefer that qualifies
// (where the volume is already assigned, or where a pod uses it), else one
// chosen by a hash of key, so that volumes spread over the nodes and the
// same volume lands on the same node each time.
func Place(pv *corev1.PersistentVolume, driver, key string, nodes []corev1.Node, csiNodes []storagev1.CSINode, prefer ...string) (string, error) {
	hasDriver := map[string]bool{}
	for _, cn := range csiNodes {
		for _, d := range cn.Spec.Drivers {
			if d.Name == driver {
				hasDriver[cn.Name] = true
			}
		}
	}
	var selector *nodeaffinity.LazyErrorNodeSelector
	if pv != nil && pv.Spec.NodeAffinity != nil && pv.Spec.NodeAffinity.Required != nil {
		selector = nodeaffinity.NewLazyErrorNodeSelector(pv.Spec.NodeAffinity.Required)
	}
	var fit []string
	for i := range nodes {
		n := &nodes[i]
		if !hasDriver[n.Name] || n.DeletionTimestamp != nil || n.Spec.Unschedulable {
			continue
		}
		if selector != nil {
			if ok, err := selector.Match(n); err != nil || !ok {
				continue
			}
		}
		fit = append(fit, n.Name)
	}
	if len(fit) == 0 {
		why := fmt.Sprintf("no node runs the CSI driver %s (none has it in its CSINode)", driver)
		if len(hasDriver) > 0 {
			why = fmt.Sprintf("no schedulable node with the CSI driver %s matches the volume's node affinity", driver)
		}
		return "", fmt.Errorf("%w: %s", ErrNoNode, why)
	}
	for _, p := range prefer {
		if p != "" && slices.Contains(fit, p) {
			return p, nil
		}
	}
	slices.Sort(fit)
	h := fnv.New32a()
	h.Write([]byte(key))
	return fit[int(h.Sum32()%uint32(len(fit)))], nil
}

// Nodes lists what Place chooses from. The lists share the cache's objects
// (not deep-copied: a thousand nodes copied for every placement were a
// large share of the controller's CPU at scale), so nothing may change
// them.
func Nodes(ctx context.Context, c client.Reader) ([]corev1.Node, []storagev1.CSINode, error) {
	nodes := &corev1.NodeList{}
	if err := c.List(ctx, nodes, client.UnsafeDisableDeepCopy); err != nil {
		return nil, nil, fmt.Errorf("list nodes: %w", err)
	}
	csiNodes := &storagev1.CSINodeList{}
	if err := c.List(ctx, csiNodes, client.UnsafeDisableDeepCopy); err != nil {
		return nil, nil, fmt.Errorf("list CSINodes: %w", err)
	}
	return nodes.Items, csiNodes.Items, nil
}

// SelectNode gives a pending claim of a WaitForFirstConsumer class a node,
// since no pod will come to consume it: one that runs the class's driver.
// It does nothing for other claims. Bound is true when the claim is bound.
func SelectNode(ctx context.Context, c client.Client, pvc *corev1.PersistentVolumeClaim, prefer ...string) (bool, error) {
	if pvc.Status.Phase == corev1.ClaimBound && pvc.Spec.VolumeName != "" {
		return true, nil
	}
	if pvc.Annotations[SelectedNodeAnnotation] != "" || pvc.Spec.StorageClassName == nil {
		return false, nil
	}
	sc := &storagev1.StorageClass{}
	if err := c.Get(ctx, client.ObjectKey{Name: *pvc.Spec.StorageClassName}, sc); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	if sc.VolumeBindingMode == nil || *sc.VolumeBindingMode != storagev1.VolumeBindingWaitForFirstConsumer {
		return false, nil
	}
	nodes, csiNodes, err := Nodes(ctx, c)
	if err != nil {
		return false, err
	}
	node, err := Place(nil, sc.Provisioner, pvc.Namespace+"/"+pvc.Name, nodes, csiNodes, prefer...)
	if err != nil {
		return false, err
	}
	if pvc.Annotations == nil {
		pvc.Annotations = map[string]string{}
	}
	pvc.Annotations[SelectedNodeAnnotation] = node
	if err := c.Update(ctx, pvc); err != nil {
		return false, fmt.Errorf("select node %s for claim %s: %w", node, pvc.Name, err)
	}
	return false, nil
}
