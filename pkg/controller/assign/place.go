package assign

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"

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

// Candidates are what Place chooses from: the nodes, their CSINodes, and
// how many VolumeAttachments each node has per driver (kubelet's and
// Ferry's alike), which a CSINode's allocatable count bounds.
type Candidates struct {
	Nodes    []corev1.Node
	CSINodes []storagev1.CSINode
	// Attached counts attachments: node → driver → count.
	Attached map[string]map[string]int
}

// Place chooses the node whose agent mounts a volume of driver, as the
// scheduler would choose for a pod: a node whose CSINode lists the driver
// (its node plugin runs there) with room under the driver's attach limit
// (CSINode allocatable count), that is not going away or cordoned, has no
// NoSchedule or NoExecute taint, and that the PV's node affinity allows
// (pv may be nil before provisioning). The first of prefer that qualifies
// wins (where the volume is already assigned, or where a pod uses it: there
// the volume is attached already, and taints do not count, as they do not
// evict a running pod's volume); else one chosen by a hash of key, so that
// volumes spread over the nodes and the same volume lands on the same node
// each time. The error says why each node was left out.
func Place(pv *corev1.PersistentVolume, driver, key string, cand Candidates, prefer ...string) (string, error) {
	limit := map[string]*int32{} // node → the driver's attach limit; present: the node runs the driver
	for _, cn := range cand.CSINodes {
		for _, d := range cn.Spec.Drivers {
			if d.Name == driver {
				limit[cn.Name] = nil
				if d.Allocatable != nil {
					limit[cn.Name] = d.Allocatable.Count
				}
			}
		}
	}
	var selector *nodeaffinity.LazyErrorNodeSelector
	if pv != nil && pv.Spec.NodeAffinity != nil && pv.Spec.NodeAffinity.Required != nil {
		selector = nodeaffinity.NewLazyErrorNodeSelector(pv.Spec.NodeAffinity.Required)
	}
	var fit, why []string
	for i := range cand.Nodes {
		n := &cand.Nodes[i]
		reason := leftOut(n, driver, limit, cand.Attached[n.Name][driver], slices.Contains(prefer, n.Name), selector)
		if reason == "" {
			fit = append(fit, n.Name)
		} else if reason != noDriver {
			why = append(why, n.Name+": "+reason)
		}
	}
	if len(fit) == 0 {
		if len(why) == 0 {
			return "", fmt.Errorf("%w: no node runs the CSI driver %s (none has it in its CSINode)", ErrNoNode, driver)
		}
		slices.Sort(why)
		return "", fmt.Errorf("%w: of the nodes with the CSI driver %s, %s", ErrNoNode, driver, strings.Join(why, "; "))
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

// noDriver is leftOut's reason for a node without the driver, which the
// error does not list node by node.
const noDriver = "no driver"

// leftOut says why node n cannot take the volume ("" if it can); a
// preferred node holds the volume already, so its own attachment is among
// those counted and taints do not turn it away.
func leftOut(n *corev1.Node, driver string, limit map[string]*int32, attached int, preferred bool, selector *nodeaffinity.LazyErrorNodeSelector) string {
	max, runs := limit[n.Name]
	switch {
	case !runs:
		return noDriver
	case n.DeletionTimestamp != nil:
		return "being deleted"
	case n.Spec.Unschedulable:
		return "cordoned"
	}
	if selector != nil {
		if ok, err := selector.Match(n); err != nil || !ok {
			return "outside the volume's node affinity"
		}
	}
	if preferred {
		return ""
	}
	if max != nil && attached >= int(*max) {
		return fmt.Sprintf("at its attach limit for %s (%d of %d)", driver, attached, *max)
	}
	for _, t := range n.Spec.Taints {
		if t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute {
			return fmt.Sprintf("tainted %s", t.ToString())
		}
	}
	return ""
}

// Nodes lists what Place chooses from. The lists share the cache's objects
// (not deep-copied: a thousand nodes copied for every placement were a
// large share of the controller's CPU at scale), so nothing may change
// them.
func Nodes(ctx context.Context, c client.Reader) (Candidates, error) {
	nodes := &corev1.NodeList{}
	if err := c.List(ctx, nodes, client.UnsafeDisableDeepCopy); err != nil {
		return Candidates{}, fmt.Errorf("list nodes: %w", err)
	}
	csiNodes := &storagev1.CSINodeList{}
	if err := c.List(ctx, csiNodes, client.UnsafeDisableDeepCopy); err != nil {
		return Candidates{}, fmt.Errorf("list CSINodes: %w", err)
	}
	vas := &storagev1.VolumeAttachmentList{}
	if err := c.List(ctx, vas, client.UnsafeDisableDeepCopy); err != nil {
		return Candidates{}, fmt.Errorf("list VolumeAttachments: %w", err)
	}
	attached := map[string]map[string]int{}
	for _, va := range vas.Items {
		if attached[va.Spec.NodeName] == nil {
			attached[va.Spec.NodeName] = map[string]int{}
		}
		attached[va.Spec.NodeName][va.Spec.Attacher]++
	}
	return Candidates{Nodes: nodes.Items, CSINodes: csiNodes.Items, Attached: attached}, nil
}

// SelectNode gives a pending claim of a WaitForFirstConsumer class a node,
// since no pod will come to consume it: one that runs the class's driver
// and, for a copy, that the source's PV allows (near: node-local drivers
// such as TopoLVM make a clone or a restore only on the source's node). It
// does nothing for other claims. Bound is true when the claim is bound.
func SelectNode(ctx context.Context, c client.Client, pvc *corev1.PersistentVolumeClaim, near *corev1.PersistentVolume, prefer ...string) (bool, error) {
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
	cand, err := Nodes(ctx, c)
	if err != nil {
		return false, err
	}
	node, err := Place(near, sc.Provisioner, pvc.Namespace+"/"+pvc.Name, cand, prefer...)
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
