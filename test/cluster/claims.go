package cluster

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// bindTimeout bounds the waits below: the provisioner and snapshotter here
// answer in seconds.
const bindTimeout = time.Minute

// claimWait is how long the waits below wait: bindTimeout, or ctx's own
// deadline where it has one (a scale run provisions hundreds of volumes
// while hundreds sync, and waits longer).
func claimWait(ctx context.Context) time.Duration {
	if deadline, ok := ctx.Deadline(); ok {
		return time.Until(deadline)
	}
	return bindTimeout
}

// Bind creates the claim and returns its PersistentVolume once the claim is
// bound (the classes here bind immediately).
func (c *Cluster) Bind(ctx context.Context, claim *corev1.PersistentVolumeClaim) (*corev1.PersistentVolume, error) {
	if err := c.Client.Create(ctx, claim); err != nil {
		return nil, fmt.Errorf("cluster: create claim %s: %w", claim.Name, err)
	}
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, claimWait(ctx), true, func(ctx context.Context) (bool, error) {
		return c.Client.Get(ctx, client.ObjectKeyFromObject(claim), claim) == nil && claim.Status.Phase == corev1.ClaimBound, nil
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: claim %s not bound: %w", claim.Name, err)
	}
	pv := &corev1.PersistentVolume{}
	if err := c.Client.Get(ctx, client.ObjectKey{Name: claim.Spec.VolumeName}, pv); err != nil {
		return nil, fmt.Errorf("cluster: volume of claim %s: %w", claim.Name, err)
	}
	return pv, nil
}

// Snapshot cuts a VolumeSnapshot named name of claim in namespace ns with
// the snapshot class the spec's examples name, and waits until it is ready
// to use.
func (c *Cluster) Snapshot(ctx context.Context, ns, name, claim string) error {
	snap := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": volumeSnapshotClassAPIVer, "kind": "VolumeSnapshot",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec": map[string]any{"volumeSnapshotClassName": SnapshotClass,
			"source": map[string]any{"persistentVolumeClaimName": claim}},
	}}
	if err := c.Client.Create(ctx, snap); err != nil {
		return fmt.Errorf("cluster: create snapshot %s: %w", name, err)
	}
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, claimWait(ctx), true, func(ctx context.Context) (bool, error) {
		if c.Client.Get(ctx, client.ObjectKeyFromObject(snap), snap) != nil {
			return false, nil
		}
		ready, _, _ := unstructured.NestedBool(snap.Object, "status", "readyToUse")
		return ready, nil
	})
	if err != nil {
		return fmt.Errorf("cluster: snapshot %s not ready: %w", name, err)
	}
	return nil
}
