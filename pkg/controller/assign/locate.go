package assign

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
)

// ErrUnplaceable marks what the user must fix before a volume can be
// placed (not a CSI volume, no node can mount it): the kinds report it as
// invalid input rather than retry it.
var ErrUnplaceable = errors.New("the volume cannot be placed")

// unplaceable is an error of ErrUnplaceable's kind that keeps its own
// message.
type unplaceable struct{ error }

func (u unplaceable) Unwrap() error      { return u.error }
func (unplaceable) Is(target error) bool { return target == ErrUnplaceable }

// Locate is the first step of both kinds' assignment: the assignment's
// copy of a claim's PV and the node to mount it on. key spreads CRs over
// equal nodes (the CR's UID); prefer is a node to keep it on when it still
// can ("" for none). Errors the user must fix are ErrUnplaceable.
func Locate(ctx context.Context, c client.Reader, pv *corev1.PersistentVolume, claim, key, prefer string) (agentv1alpha1.Volume, string, error) {
	vol, err := VolumeOf(pv, claim)
	if err != nil {
		return vol, "", unplaceable{err}
	}
	if prefer != "" && stillFits(ctx, c, pv, vol.Driver, prefer) {
		return vol, prefer, nil
	}
	cand, err := Nodes(ctx, c)
	if err != nil {
		return vol, "", err
	}
	node, err := Place(pv, vol.Driver, key, cand, prefer)
	if err != nil {
		return vol, "", unplaceable{err}
	}
	return vol, node, nil
}

// stillFits says whether Place would keep the volume on node, reading only
// that node: a destination is looked at on every report of its agent's,
// and listing every node each time was a fifth of the controller's CPU on
// a thousand nodes.
func stillFits(ctx context.Context, c client.Reader, pv *corev1.PersistentVolume, driver, node string) bool {
	n := &corev1.Node{}
	cn := &storagev1.CSINode{}
	if c.Get(ctx, client.ObjectKey{Name: node}, n) != nil || c.Get(ctx, client.ObjectKey{Name: node}, cn) != nil {
		return false // gone, or unknown: the full placement decides
	}
	got, err := Place(pv, driver, "", Candidates{Nodes: []corev1.Node{*n}, CSINodes: []storagev1.CSINode{*cn}}, node)
	return err == nil && got == node
}

// Privileged reads the namespace's privileged-movers annotation, which
// decides whether a transfer keeps owners and special files.
func Privileged(ctx context.Context, c client.Reader, namespace string) (bool, error) {
	ns := &corev1.Namespace{}
	if err := c.Get(ctx, client.ObjectKey{Name: namespace}, ns); err != nil {
		return false, fmt.Errorf("get namespace %s: %w", namespace, err)
	}
	return volsyncv1alpha1.PrivilegedMovers(ns), nil
}
