package v1alpha1_test

import (
	"context"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv/apiserver"
	agentv1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
)

var env *apiserver.Env

func TestMain(m *testing.M) { os.Exit(apiserver.Main(m, &env)) }

func assignment(name, node string) *agentv1.MountAssignment {
	return &agentv1.MountAssignment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: agentv1.MountAssignmentSpec{
			NodeName:    node,
			Owner:       agentv1.OwnerReference{Kind: "ReplicationDestination", Namespace: "ns", Name: "rd", UID: "u"},
			Volume:      agentv1.Volume{PersistentVolumeName: "pv", Claim: "pvc", Driver: "d", VolumeHandle: "h"},
			Destination: &agentv1.DestinationRole{KeySecret: agentv1.SecretReference{Namespace: "ferry", Name: "k"}},
		},
	}
}

// TestRolesAndNode checks the rules the agent relies on: exactly one role,
// a fixed node, and a field selector on the node name for its cache.
func TestRolesAndNode(t *testing.T) {
	apiserver.Need(t, env)
	ctx := context.Background()
	c := env.Client

	both := assignment("both", "node-a")
	both.Spec.Source = &agentv1.SourceRole{Address: "x", Port: 22, KeySecret: agentv1.SecretReference{Name: "k"}}
	err := c.Create(ctx, both)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "set exactly one role: source or destination")

	none := assignment("none", "node-a")
	none.Spec.Destination = nil
	err = c.Create(ctx, none)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "set exactly one role")

	a := assignment("on-a", "node-a")
	require.NoError(t, c.Create(ctx, a))
	require.NoError(t, c.Create(ctx, assignment("on-b", "node-b")))
	src := assignment("source-defaults", "node-b")
	src.Spec.Destination = nil
	src.Spec.Source = &agentv1.SourceRole{Address: "10.0.0.1", Port: 22, KeySecret: agentv1.SecretReference{Name: "k"}}
	require.NoError(t, c.Create(ctx, src))
	assert.Equal(t, "root", src.Spec.Source.User, "ssh user defaults to root, as VolSync's")
	assert.Equal(t, "/", src.Spec.Source.Path, "path defaults to the volume's root")

	a.Spec.NodeName = "node-b"
	err = c.Update(ctx, a)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "nodeName is immutable")

	var list agentv1.MountAssignmentList
	require.NoError(t, c.List(ctx, &list, client.InNamespace("default"),
		client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector(agentv1.NodeNameField, "node-a")}))
	require.Len(t, list.Items, 1)
	assert.Equal(t, "on-a", list.Items[0].Name)
}
