package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apiresource "k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/test/cluster"
)

// TestTransferLimitsInsideTheAgentPod: the agent runs as a DaemonSet pod,
// so the cgroups it gives each transfer are made under its container's
// cgroup, through the cgroup filesystem the runtime mounts for it. A source
// whose moverResources allow 1 MiB of memory fails its sync with the
// memory-limit message (the kernel killed rsync in its own group, the agent
// pod lived on); with the limit raised, the next sync succeeds.
func TestTransferLimitsInsideTheAgentPod(t *testing.T) {
	need(t)
	ctx := context.Background()
	_, rs := pair(t, "limits", "data", volsyncv1alpha1.CopyMethodDirect)
	require.NoError(t, src.Client.Create(ctx, claim("limits", "data", nil)))
	runPod(t, src, cluster.AppPod("limits", "write", "data", "head -c 4194304 /dev/urandom > /data/blob"))

	memory := func(rs *volsyncv1alpha1.ReplicationSource, q string) {
		rs.Spec.Rsync.MoverResources = &corev1.ResourceRequirements{
			Limits: corev1.ResourceList{corev1.ResourceMemory: apiresource.MustParse(q)}}
	}
	memory(rs, "1Mi")
	rs.Spec.Trigger = &volsyncv1alpha1.TriggerSpec{Manual: "small"}
	require.NoError(t, src.Client.Create(ctx, rs))
	require.NoError(t, waitFor(ctx, 3*time.Minute, func() bool {
		return src.Client.Get(ctx, client.ObjectKeyFromObject(rs), rs) == nil && rs.Status.LatestMoverStatus != nil
	}), "the limited sync to end: %+v", rs.Status)
	assert.Equal(t, volsyncv1alpha1.MoverResultFailed, rs.Status.LatestMoverStatus.Result)
	assert.Contains(t, rs.Status.LatestMoverStatus.Logs, "exceeded its memory limit")

	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := src.Client.Get(ctx, client.ObjectKeyFromObject(rs), rs); err != nil {
			return err
		}
		memory(rs, "256Mi")
		rs.Spec.Trigger.Manual = "enough"
		return src.Client.Update(ctx, rs)
	}))
	waitSynced(t, rs, "enough")
}
