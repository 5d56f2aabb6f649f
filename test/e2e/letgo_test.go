package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/test/cluster"
)

// TestDestinationLetsGoForAPod: a user's pod starts using a destination's
// claim (to inspect the replica). Ferry lets go of the volume for real, the
// agent's assignment gone and the condition saying why, while kubelet
// mounts it for the pod, which writes and reads there; when the pod is
// gone, Ferry serves the destination again.
func TestDestinationLetsGoForAPod(t *testing.T) {
	need(t)
	ctx := context.Background()
	rd, _ := pair(t, "inspect", "replica", volsyncv1alpha1.CopyMethodClone)
	assigned := func() bool {
		list := &agentv1alpha1.MountAssignmentList{}
		require.NoError(t, dst.Client.List(ctx, list, client.InNamespace(ferryNamespace)))
		for _, ma := range list.Items {
			if ma.Spec.Owner.Namespace == "inspect" && ma.Status.Phase == agentv1alpha1.PhaseMounted {
				return true
			}
		}
		return false
	}
	require.NoError(t, waitFor(ctx, 2*time.Minute, assigned), "the destination served")

	pod := cluster.AppPod("inspect", "inspect", "volsync-replica-dst", "echo looked > /data/inspected && grep -qx looked /data/inspected && sleep infinity")
	require.NoError(t, dst.Client.Create(ctx, pod))
	require.NoError(t, waitFor(ctx, 2*time.Minute, func() bool {
		return dst.Client.Get(ctx, client.ObjectKeyFromObject(pod), pod) == nil && pod.Status.Phase == corev1.PodRunning
	}), "the user's pod runs on the claim")
	require.NoError(t, waitFor(ctx, time.Minute, func() bool {
		if assigned() || dst.Client.Get(ctx, client.ObjectKeyFromObject(rd), rd) != nil {
			return false
		}
		for _, c := range rd.Status.Conditions {
			if c.Type == volsyncv1alpha1.ConditionSynchronizing && strings.Contains(c.Message, "in use by pod inspect") {
				return true
			}
		}
		return false
	}), "Ferry let go of the claim and says why: %+v", rd.Status.Conditions)

	require.NoError(t, dst.Client.Delete(ctx, pod, client.GracePeriodSeconds(0)))
	require.NoError(t, waitFor(ctx, 2*time.Minute, assigned), "the destination served again once the pod is gone")
}
