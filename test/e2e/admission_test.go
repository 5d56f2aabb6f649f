package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apiresource "k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
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

	cs, err := kubernetes.NewForConfig(dst.Config)
	require.NoError(t, err)
	tr, err := cs.CoreV1().ServiceAccounts(ferryNamespace).CreateToken(ctx, "ferry-nodeagent", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](600),
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: other.Name, UID: other.UID}}},
		metav1.CreateOptions{})
	require.NoError(t, err)
	cfg := rest.AnonymousClientConfig(dst.Config)
	cfg.BearerToken = tr.Status.Token
	agent, err := client.New(cfg, client.Options{Scheme: dst.Client.Scheme()})
	require.NoError(t, err)

	ma := &agentv1alpha1.MountAssignment{}
	require.NoError(t, agent.Get(ctx, client.ObjectKeyFromObject(&served), ma), "agents may read")
	ma.Status.Phase = agentv1alpha1.PhaseRefused
	err = agent.Status().Update(ctx, ma)
	assert.ErrorContains(t, err, "the node agent of "+other.Spec.NodeName+" may write only its own node's MountAssignments")
	require.NoError(t, dst.Client.Get(ctx, client.ObjectKeyFromObject(&served), ma))
	assert.Equal(t, agentv1alpha1.PhaseMounted, ma.Status.Phase, "the other node's assignment is unchanged")
	require.NoError(t, dst.Client.Delete(ctx, rd))
}
