package agent

import (
	"testing"

	"github.com/stretchr/testify/assert"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
)

func TestObjectsBelongToOneUID(t *testing.T) {
	ma := func(uid types.UID) *agentv1alpha1.MountAssignment {
		return &agentv1alpha1.MountAssignment{ObjectMeta: metav1.ObjectMeta{Namespace: "ferry", Name: "rs-1", UID: uid}}
	}
	key := types.NamespacedName{Namespace: "ferry", Name: "rs-1"}
	var o objects[destinationState]
	o.fresh = func(uid types.UID) *destinationState { return &destinationState{uid: uid} }
	first := o.of(ma("a"))
	assert.Same(t, first, o.of(ma("a")), "the same object: the same state")
	assert.Equal(t, types.UID("a"), first.uid)
	second := o.of(ma("b"))
	assert.NotSame(t, first, second, "deleted and created again under the name: afresh")
	assert.Equal(t, types.UID("b"), second.uid)
	o.drop(key, first)
	assert.Same(t, second, o.get(key), "dropping the old object's state leaves the new one's")
	o.drop(key, second)
	assert.Nil(t, o.get(key))
}
