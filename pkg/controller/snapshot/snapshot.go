// Package snapshot reads and writes CSI VolumeSnapshots
// (snapshot.storage.k8s.io/v1) for the controller, as unstructured objects:
// the snapshot API is a CRD that Ferry does not vendor types for.
package snapshot

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
)

// Group is the snapshot API group, as a PVC's dataSource names it.
const Group = "snapshot.storage.k8s.io"

// Kind is the VolumeSnapshot kind.
const Kind = "VolumeSnapshot"

// GVK is the VolumeSnapshot kind the controller works with.
var GVK = schema.GroupVersionKind{Group: Group, Version: "v1", Kind: Kind}

// ListGVK is its list kind.
var ListGVK = schema.GroupVersionKind{Group: Group, Version: "v1", Kind: Kind + "List"}

// New returns an empty VolumeSnapshot object to read into or watch.
func New() *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(GVK)
	return u
}

// Spec is what to snapshot.
type Spec struct {
	Namespace, Name string
	// Claim is the PVC to snapshot.
	Claim string
	// Class is the VolumeSnapshotClass (nil: the default for the driver).
	Class *string
	// Labels go on the snapshot.
	Labels map[string]string
}

// Ensure makes sure the snapshot exists, owned by owner, and returns it.
func Ensure(ctx context.Context, c client.Client, owner client.Object, s Spec) (*unstructured.Unstructured, error) {
	u := New()
	err := c.Get(ctx, client.ObjectKey{Namespace: s.Namespace, Name: s.Name}, u)
	if err == nil {
		return u, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("get VolumeSnapshot %s: %w", s.Name, err)
	}
	u = New()
	u.SetNamespace(s.Namespace)
	u.SetName(s.Name)
	u.SetLabels(s.Labels)
	spec := map[string]any{"source": map[string]any{"persistentVolumeClaimName": s.Claim}}
	if s.Class != nil {
		spec["volumeSnapshotClassName"] = *s.Class
	}
	u.Object["spec"] = spec
	if err := controllerutil.SetControllerReference(owner, u, c.Scheme()); err != nil {
		return nil, fmt.Errorf("own VolumeSnapshot %s: %w", s.Name, err)
	}
	if err := c.Create(ctx, u); err != nil {
		return nil, fmt.Errorf("create VolumeSnapshot %s of %s: %w", s.Name, s.Claim, err)
	}
	return u, nil
}

// Get reads a snapshot; nil if there is none.
func Get(ctx context.Context, c client.Reader, namespace, name string) (*unstructured.Unstructured, error) {
	u := New()
	err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, u)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get VolumeSnapshot %s: %w", name, err)
	}
	return u, nil
}

// Ready says whether a snapshot can be used, with its restore size, and the
// error the snapshotter reported, if any.
func Ready(u *unstructured.Unstructured) (bool, *resource.Quantity, error) {
	if msg, ok, _ := unstructured.NestedString(u.Object, "status", "error", "message"); ok && msg != "" {
		return false, nil, fmt.Errorf("VolumeSnapshot %s: %s", u.GetName(), msg)
	}
	ready, _, _ := unstructured.NestedBool(u.Object, "status", "readyToUse")
	var size *resource.Quantity
	if s, ok, _ := unstructured.NestedString(u.Object, "status", "restoreSize"); ok {
		if q, err := resource.ParseQuantity(s); err == nil {
			size = &q
		}
	}
	return ready, size, nil
}

// Delete deletes a snapshot; gone already is fine.
func Delete(ctx context.Context, c client.Client, namespace, name string) error {
	u := New()
	u.SetNamespace(namespace)
	u.SetName(name)
	if err := c.Delete(ctx, u); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete VolumeSnapshot %s: %w", name, err)
	}
	return nil
}

// Owned lists the snapshots in namespace whose controller is the object
// with uid: Ferry's images of a destination and those VolSync left for it
// (VolSync owns its images the same way), so that a taken-over
// destination's old image goes when Ferry's first replaces it.
func Owned(ctx context.Context, c client.Reader, namespace string, uid types.UID) ([]unstructured.Unstructured, error) {
	l := &unstructured.UnstructuredList{}
	l.SetGroupVersionKind(ListGVK)
	if err := c.List(ctx, l, client.InNamespace(namespace)); err != nil {
		return nil, fmt.Errorf("list VolumeSnapshots: %w", err)
	}
	var out []unstructured.Unstructured
	for _, s := range l.Items {
		if ref := metav1.GetControllerOf(&s); ref != nil && ref.UID == uid {
			out = append(out, s)
		}
	}
	return out, nil
}

// Ref is a PVC dataSource / latestImage reference to a snapshot.
func Ref(name string) *corev1.TypedLocalObjectReference {
	return &corev1.TypedLocalObjectReference{APIGroup: ptr.To(Group), Kind: Kind, Name: name}
}
