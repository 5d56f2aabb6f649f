package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apiresource "k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/test/cluster"
)

// TestAgentTokenOpensOnlyItsNode: what a compromised agent pod could do
// with its own credentials. A token bound to the agent pod of one node
// (requested from the apiserver as kubelet requests the pod's, so it
// carries the node's name) reads MountAssignments but may not write the
// one another node's agent serves: the own-node admission policy from
// deploy/ refuses it, and the assignment stays as it was.
func TestAgentTokenOpensOnlyItsNode(t *testing.T) {
	need(t)
	ctx := context.Background()
	require.NoError(t, dst.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "tenant"}}))
	rd := &volsyncv1alpha1.ReplicationDestination{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: "replica"},
		Spec: volsyncv1alpha1.ReplicationDestinationSpec{Rsync: &volsyncv1alpha1.ReplicationDestinationRsyncSpec{
			ReplicationDestinationVolumeOptions: volsyncv1alpha1.ReplicationDestinationVolumeOptions{
				CopyMethod: volsyncv1alpha1.CopyMethodSnapshot, Capacity: ptr.To(apiresource.MustParse("1Gi")),
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}}}}}
	require.NoError(t, dst.Client.Create(ctx, rd))
	var served agentv1alpha1.MountAssignment
	require.NoError(t, waitFor(ctx, 2*time.Minute, func() bool {
		list := &agentv1alpha1.MountAssignmentList{}
		if dst.Client.List(ctx, list, client.InNamespace(ferryNamespace)) != nil {
			return false
		}
		for _, ma := range list.Items {
			if ma.Spec.Owner.Namespace == "tenant" && ma.Status.Phase == agentv1alpha1.PhaseMounted && ma.Status.Endpoint != nil {
				served = ma
				return true
			}
		}
		return false
	}), "the destination's assignment served")

	pods := &corev1.PodList{}
	require.NoError(t, dst.Client.List(ctx, pods, client.InNamespace(ferryNamespace),
		client.MatchingLabels{"app.kubernetes.io/name": "ferry-nodeagent"}))
	var other *corev1.Pod
	for i, p := range pods.Items {
		if p.Spec.NodeName != served.Spec.NodeName {
			other = &pods.Items[i]
		}
	}
	require.NotNil(t, other, "an agent on another node than %s", served.Spec.NodeName)

	t.Run("the agent of deploy/", func(t *testing.T) {
		tryOthersAssignment(t, &served, ferryNamespace, "ferry-nodeagent", other.Name, other.UID, other.Spec.NodeName)
	})
	t.Run("an agent installed in another namespace, with a name prefix", func(t *testing.T) {
		// The same RBAC and policy through a kustomize overlay that moves
		// them: the policy must still recognise the agent.
		const ns, sa = "ferry-elsewhere", "elsewhere-ferry-nodeagent"
		root, err := testenv.RepoRoot()
		require.NoError(t, err)
		dir := t.TempDir()
		rel, err := filepath.Rel(dir, filepath.Join(root, "deploy", "nodeagent", "rbac"))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, "kustomization.yaml"),
			[]byte("namespace: "+ns+"\nnamePrefix: elsewhere-\nresources:\n  - "+rel+"\n"), 0o644))
		require.NoError(t, dst.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}))
		out, err := exec.CommandContext(ctx, filepath.Join(dst.BinDir, "kubectl"), "--kubeconfig", dst.Kubeconfig,
			"apply", "-k", dir).CombinedOutput()
		require.NoError(t, err, "%s", out)
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "agent"},
			Spec: corev1.PodSpec{NodeName: other.Spec.NodeName, ServiceAccountName: sa,
				Containers: []corev1.Container{{Name: "pause", Image: cluster.PauseImage}}}}
		require.NoError(t, dst.Client.Create(ctx, pod))
		// That agent's RBAC opens its own namespace's assignments: one of
		// the served node's, written there by hand.
		theirs := &agentv1alpha1.MountAssignment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "served"}, Spec: served.Spec}
		require.NoError(t, dst.Client.Create(ctx, theirs))
		theirs.Status.Phase = agentv1alpha1.PhaseMounted
		require.NoError(t, dst.Client.Status().Update(ctx, theirs))
		tryOthersAssignment(t, theirs, ns, sa, pod.Name, pod.UID, other.Spec.NodeName)
	})
	require.NoError(t, dst.Client.Delete(ctx, rd))
}

// tryOthersAssignment takes a token of ServiceAccount ns/sa bound to pod
// (named, with uid) on node, as kubelet requests one for the pod, and with
// it tries to change the status of served, an assignment of another node:
// refused by the own-node policy, and the assignment unchanged.
func tryOthersAssignment(t *testing.T, served *agentv1alpha1.MountAssignment, ns, sa, pod string, uid types.UID, node string) {
	t.Helper()
	ctx := context.Background()
	cs, err := kubernetes.NewForConfig(dst.Config)
	require.NoError(t, err)
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](600),
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod, UID: uid}}},
		metav1.CreateOptions{})
	require.NoError(t, err)
	cfg := rest.AnonymousClientConfig(dst.Config)
	cfg.BearerToken = tr.Status.Token
	agent, err := client.New(cfg, client.Options{Scheme: dst.Client.Scheme()})
	require.NoError(t, err)

	ma := &agentv1alpha1.MountAssignment{}
	require.NoError(t, agent.Get(ctx, client.ObjectKeyFromObject(served), ma), "agents may read")
	ma.Status.Phase = agentv1alpha1.PhaseRefused
	err = agent.Status().Update(ctx, ma)
	assert.ErrorContains(t, err, "the node agent of "+node+" may write only its own node's MountAssignments")
	require.NoError(t, dst.Client.Get(ctx, client.ObjectKeyFromObject(served), ma))
	assert.Equal(t, agentv1alpha1.PhaseMounted, ma.Status.Phase, "the other node's assignment is unchanged")
}
