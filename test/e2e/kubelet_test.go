package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	coordinationv1 "k8s.io/api/coordination/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/test/cluster"
)

// TestKubeletRestartLeavesFerrysVolume: kubelet restarted on the node
// where Ferry holds a destination's volume (staged at kubelet's staging
// path, published under kubelet's CSI plugin directory) reconstructs its
// own volumes and cleans up its orphans without touching Ferry's: the next
// sync lands in the volume itself, and a claim restored from the image it
// cuts holds every row.
func TestKubeletRestartLeavesFerrysVolume(t *testing.T) {
	need(t)
	ctx := context.Background()
	ns := "kubelet-restart"
	rd, rs := pair(t, ns, "data", volsyncv1alpha1.CopyMethodClone)
	require.NoError(t, src.Client.Create(ctx, claim(ns, "data", nil)))
	runPod(t, src, cluster.AppPod(ns, "write-1", "data", "sqlite3 /data/app.db '"+rows(1, 100)+"'"))
	rs.Spec.Trigger = &volsyncv1alpha1.TriggerSpec{Manual: "first"}
	require.NoError(t, src.Client.Create(ctx, rs))
	waitSynced(t, rs, "first")
	require.NoError(t, waitFor(ctx, 2*time.Minute, func() bool { return latestImage(t, rd) != "" }), "the first sync's image")
	first := latestImage(t, rd)

	list := &agentv1alpha1.MountAssignmentList{}
	require.NoError(t, dst.Client.List(ctx, list, client.InNamespace(ferryNamespace)))
	node := ""
	for _, ma := range list.Items {
		if ma.Spec.Owner.Namespace == ns && ma.Spec.Owner.Name == rd.Name {
			node = ma.Spec.NodeName
		}
	}
	require.NotEmpty(t, node, "the destination's assignment")
	restarted := time.Now()
	require.NoError(t, dst.RestartKubelet(node))
	require.NoError(t, waitFor(ctx, 2*time.Minute, func() bool {
		lease := &coordinationv1.Lease{}
		return dst.Client.Get(ctx, client.ObjectKey{Namespace: "kube-node-lease", Name: node}, lease) == nil &&
			lease.Spec.RenewTime != nil && lease.Spec.RenewTime.After(restarted)
	}), "kubelet on %s back and renewing its lease", node)

	runPod(t, src, cluster.AppPod(ns, "write-2", "data", "sqlite3 /data/app.db '"+rows(101, 100)+"'"))
	require.NoError(t, src.Client.Get(ctx, client.ObjectKeyFromObject(rs), rs))
	rs.Spec.Trigger.Manual = "second"
	require.NoError(t, src.Client.Update(ctx, rs))
	waitSynced(t, rs, "second")
	restoreAndCheck(t, rd, "restored", first, check(200))
}
