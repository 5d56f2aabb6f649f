// Package v1alpha1 is VolSync's replication API (group volsync.backube,
// version v1alpha1) as Ferry serves it: ReplicationSource and
// ReplicationDestination with the rsync-over-ssh mover.
//
// Field names, JSON shapes and defaults follow VolSync so that manifests
// written for VolSync apply unchanged; the CRDs generated from these types add
// admission-time validation whose messages say what to fix. Fields of VolSync's
// other movers are accepted without a schema so that such a CR is stored and
// then told, in a condition, that Ferry does not serve that mover.
//
// +kubebuilder:object:generate=true
// +groupName=volsync.backube
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the API group and version of VolSync's replication
	// kinds; Ferry keeps VolSync's so existing manifests and tooling work.
	GroupVersion = schema.GroupVersion{Group: "volsync.backube", Version: "v1alpha1"}

	// SchemeBuilder registers the kinds of this package with a runtime.Scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the kinds of this package to a runtime.Scheme; clients
	// and managers call it before they read or write these objects.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&ReplicationSource{},
		&ReplicationSourceList{},
		&ReplicationDestination{},
		&ReplicationDestinationList{},
	)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
