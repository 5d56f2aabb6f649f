package nodeagent_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/assign"
	"github.com/ferrysync/ferry/pkg/csi"
	"github.com/ferrysync/ferry/pkg/mount"
	"github.com/ferrysync/ferry/test/cluster"
	"github.com/ferrysync/ferry/test/harness"
)

// refused: an assignment for a PV no Ferry CR owns is refused without
// mounting anything, and says why; kubectl describe shows events on the
// assignments.
func (r *replication) refused(t *testing.T) {
	stray := bound(t, r.c, pvc("app", "not-replicated", nil, nil))
	refused := r.add(t, &agentv1alpha1.MountAssignment{ObjectMeta: metav1.ObjectMeta{Name: "stray", Namespace: ferryNamespace},
		Spec: agentv1alpha1.MountAssignmentSpec{NodeName: r.nodeA.Name,
			Owner:  agentv1alpha1.OwnerReference{Kind: "ReplicationSource", Namespace: "app", Name: "rs", UID: string(r.rs.UID)},
			Volume: volumeOf(stray),
			Source: &agentv1alpha1.SourceRole{Address: r.ep.Address, Port: r.ep.Port,
				KeySecret: agentv1alpha1.SecretReference{Namespace: ferryNamespace, Name: "rs-keys"}},
			SyncGeneration: 1}})
	testenv.Eventually(t, "the stray assignment to be refused", time.Minute, func() bool {
		return r.get(t, refused.Name).Status.Phase == agentv1alpha1.PhaseRefused
	})
	cond := meta.FindStatusCondition(r.get(t, refused.Name).Status.Conditions, agentv1alpha1.ConditionReady)
	require.NotNil(t, cond)
	assert.Contains(t, cond.Message, "neither owned nor named by ReplicationSource rs")
	assertNotMounted(t, r.nodeA, refused.Name)
	assert.Nil(t, r.get(t, refused.Name).Status.LastSync, "nothing ran")
	for name, reason := range map[string]string{refused.Name: agentv1alpha1.ReasonRefused, r.src.Name: agentv1alpha1.ReasonSyncSucceeded, r.dst.Name: agentv1alpha1.ReasonServing} {
		testenv.Eventually(t, "a "+reason+" event on "+name, 30*time.Second, func() bool {
			list := &eventsv1.EventList{}
			require.NoError(t, r.k.List(r.ctx, list, client.InNamespace(ferryNamespace)))
			for _, e := range list.Items {
				if e.Regarding.Name == name && e.Reason == reason {
					return true
				}
			}
			return false
		})
	}
}

// credentials: what a compromised agent on node A could try with its
// token; the own-node admission policy (deploy/nodeagent/rbac) refuses it.
func (r *replication) credentials(t *testing.T) {
	cfg, err := clientcmd.BuildConfigFromFlags("", harness.AgentKubeconfig(t, r.c, r.nodeA.Name))
	require.NoError(t, err)
	agentA, err := client.New(cfg, client.Options{Scheme: r.k.Scheme()})
	require.NoError(t, err)
	var denied error
	testenv.Eventually(t, "node A's agent to be denied node B's assignment", 30*time.Second, func() bool {
		ma := &agentv1alpha1.MountAssignment{}
		require.NoError(t, agentA.Get(r.ctx, client.ObjectKeyFromObject(r.dst), ma), "agents may read")
		ma.Status.Phase = agentv1alpha1.PhaseRefused
		denied = agentA.Status().Update(r.ctx, ma)
		return denied != nil
	})
	assert.ErrorContains(t, denied, "the node agent of node-a may write only its own node's MountAssignments")
	assert.Equal(t, agentv1alpha1.PhaseHolding, r.get(t, r.dst.Name).Status.Phase, "node B's assignment is unchanged")

	own := r.get(t, r.src.Name)
	require.NoError(t, agentA.Status().Update(r.ctx, own.DeepCopy()), "its own node's status")
	moved := r.get(t, r.src.Name)
	moved.Spec.NodeName = r.nodeB.Name
	assert.ErrorContains(t, agentA.Update(r.ctx, moved), "nodeName is immutable", "moving its assignment elsewhere")
	finalizer := r.get(t, r.src.Name)
	require.NoError(t, agentA.Update(r.ctx, finalizer), "its own node's assignment, spec unchanged (finalizers)")
	changed := r.get(t, r.src.Name)
	changed.Spec.Source.Address = "10.0.0.66"
	assert.ErrorContains(t, agentA.Update(r.ctx, changed), "may not change a MountAssignment's spec", "redirecting its own transfer")
	assert.Equal(t, r.ep.Address, r.get(t, r.src.Name).Spec.Source.Address)
}

// cleanup: deleting the assignments unmounts everything; the agents stop
// cleanly and leave no process or loop device behind.
func (r *replication) cleanup(t *testing.T) {
	for _, ma := range r.made {
		require.NoError(t, client.IgnoreNotFound(r.k.Delete(r.ctx, ma)))
	}
	testenv.Eventually(t, "the assignments to be released and gone", time.Minute, func() bool {
		list := &agentv1alpha1.MountAssignmentList{}
		require.NoError(t, r.k.List(r.ctx, list, client.InNamespace(ferryNamespace)))
		return len(list.Items) == 0
	})
	for _, n := range []cluster.Node{r.nodeA, r.nodeB} {
		mounts, err := mount.Under(csi.DefaultRoot(n.KubeletDir))
		require.NoError(t, err)
		assert.Empty(t, mounts, "mounts left on %s", n.Name)
	}
	for _, a := range []*harness.Proc{r.agentA, r.agentB} {
		took, err := a.Stop()
		assert.NoError(t, err, "the agent exits cleanly on SIGTERM")
		assert.Less(t, took, 15*time.Second)
	}
	// This test's own: other packages run transfers meanwhile. The source's
	// rsync and the remote-shell helpers name the binaries' directory.
	assert.Empty(t, testenv.Processes(t, bins.Dir), "transfer processes left behind")
	testenv.NoLoopDevices(t, r.c.Dir)
	if r.attachedPV != nil {
		require.NoError(t, assign.Detach(r.ctx, r.k, r.attachedPV.Name))
	}
}
