// Package v1alpha1 is Ferry's internal API between the controller and the
// node agents (group agent.ferrysync.io): the MountAssignment.
//
// A MountAssignment is the only channel from controller to agent. It is
// durable and visible with kubectl, so either side can restart at any moment
// and pick up where it was: the spec says which volume must be on which node
// and which sync to run or accept; the status says what the agent did. Users
// do not write these objects; the controller owns them.
//
// +kubebuilder:object:generate=true
// +groupName=agent.ferrysync.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of Ferry's internal API; it is
	// apart from volsync.backube so that nothing of Ferry's own leaks into the
	// VolSync-compatible API.
	GroupVersion = schema.GroupVersion{Group: "agent.ferrysync.io", Version: "v1alpha1"}

	// SchemeBuilder registers the kinds of this package with a runtime.Scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the kinds of this package to a runtime.Scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&MountAssignment{},
		&MountAssignmentList{},
	)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
