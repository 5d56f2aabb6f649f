package cluster

import (
	"context"
	"fmt"
	"os"
	"strings"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/test/csidriver/driver"
)

// Storage and snapshot class names: the spec's examples name my-sc and
// my-vsc; manifests that name none get the defaults.
const (
	StorageClass              = "my-sc"
	DefaultStorageClass       = "standard"
	AttachStorageClass        = "attach-sc"
	SnapshotClass             = "my-vsc"
	DefaultSnapshotClass      = "standard-vsc"
	defaultStorageClassAnno   = "storageclass.kubernetes.io/is-default-class"
	defaultSnapshotClassAnno  = "snapshot.storage.kubernetes.io/is-default-class"
	volumeSnapshotClassAPIVer = "snapshot.storage.k8s.io/v1"
)

// createObjects makes what kubelet and an installer would: Node and CSINode
// objects, CSIDrivers, storage and snapshot classes.
func (c *Cluster) createObjects(ctx context.Context) error {
	var objs []client.Object
	for _, n := range c.Nodes {
		if c.kubelet {
			break // kubelet registers its Node and, for each plugin, the CSINode entry
		}
		labels := map[string]string{corev1.LabelHostname: n.Name, driver.TopologyKey: n.Name}
		// Kubelet leaves attach and detach to the attach-detach
		// controller and says so with this annotation.
		annotations := map[string]string{"volumes.kubernetes.io/controller-managed-attach-detach": "true"}
		objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: labels, Annotations: annotations}})
		csiNode := &storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}
		for _, d := range c.Drivers {
			cd := storagev1.CSINodeDriver{Name: d.Name, NodeID: n.Name, TopologyKeys: []string{driver.TopologyKey}}
			if limit := d.Profile.MaxVolumesPerNode; limit > 0 {
				cd.Allocatable = &storagev1.VolumeNodeResources{Count: ptr.To(int32(limit))}
			}
			csiNode.Spec.Drivers = append(csiNode.Spec.Drivers, cd)
		}
		objs = append(objs, csiNode)
	}
	immediate := storagev1.VolumeBindingImmediate
	del := corev1.PersistentVolumeReclaimDelete
	for _, d := range c.Drivers {
		objs = append(objs, &storagev1.CSIDriver{ObjectMeta: metav1.ObjectMeta{Name: d.Name},
			Spec: storagev1.CSIDriverSpec{AttachRequired: ptr.To(d.Profile.AttachRequired), PodInfoOnMount: ptr.To(false)}})
		var params map[string]string
		if d.StageSecret != "" {
			sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: d.StageSecret, Namespace: stageSecretNamespace}, StringData: map[string]string{}}
			for _, k := range d.Profile.StageSecrets {
				sec.StringData[k] = "test-" + k
			}
			objs = append(objs, sec)
			params = map[string]string{"csi.storage.k8s.io/node-stage-secret-name": d.StageSecret,
				"csi.storage.k8s.io/node-stage-secret-namespace": stageSecretNamespace}
		}
		for _, name := range d.StorageClasses {
			sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: d.Name, Parameters: params,
				VolumeBindingMode: &immediate, ReclaimPolicy: &del, AllowVolumeExpansion: ptr.To(false)}
			if name == DefaultStorageClass {
				sc.Annotations = map[string]string{defaultStorageClassAnno: "true"}
			}
			objs = append(objs, sc)
		}
		for _, name := range d.SnapshotClasses {
			vsc := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": volumeSnapshotClassAPIVer, "kind": "VolumeSnapshotClass",
				"metadata": map[string]any{"name": name}, "driver": d.Name, "deletionPolicy": "Delete",
			}}
			if name == DefaultSnapshotClass {
				vsc.SetAnnotations(map[string]string{defaultSnapshotClassAnno: "true"})
			}
			objs = append(objs, vsc)
		}
	}
	for _, o := range objs {
		if err := c.Client.Create(ctx, o); err != nil {
			return fmt.Errorf("cluster: create %T %s: %w", o, o.GetName(), err)
		}
	}
	return nil
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// ReportNodeStatus does what kubelet's status loop does for a node: marks it
// Ready with a fresh heartbeat and reports the volumes it has in use
// (kubelet lists those its pods mount; the simulated nodes run no pods, so
// none). The attach-detach controller reads volumesInUse to decide whether
// an attachment it does not need is safe to detach.
func (c *Cluster) ReportNodeStatus(ctx context.Context, name string) error {
	node := &corev1.Node{}
	if err := c.Client.Get(ctx, client.ObjectKey{Name: name}, node); err != nil {
		return fmt.Errorf("cluster: get node %s: %w", name, err)
	}
	now := metav1.Now()
	ready := corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		Message: "simulated kubelet is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now}
	conditions := []corev1.NodeCondition{ready}
	for _, cond := range node.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			if cond.Status == corev1.ConditionTrue {
				conditions[0].LastTransitionTime = cond.LastTransitionTime
			}
			continue
		}
		conditions = append(conditions, cond)
	}
	node.Status.Conditions = conditions
	node.Status.VolumesInUse = nil
	if err := c.Client.Status().Update(ctx, node); err != nil {
		return fmt.Errorf("cluster: report status of node %s: %w", name, err)
	}
	return nil
}
