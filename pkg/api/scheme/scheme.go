// Package scheme builds the one scheme every Ferry program uses: the core
// Kubernetes kinds, VolSync's kinds (pkg/api/v1alpha1) and MountAssignment
// (pkg/api/agent/v1alpha1).
package scheme

import (
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
)

// New returns a scheme with the core kinds, VolSync's kinds and
// MountAssignment, plus whatever more adds: the controller, the agent and
// the tests build theirs here, so that they cannot drift apart.
func New(more ...func(*runtime.Scheme) error) (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for _, add := range append([]func(*runtime.Scheme) error{clientgoscheme.AddToScheme, volsyncv1alpha1.AddToScheme, agentv1alpha1.AddToScheme}, more...) {
		if err := add(s); err != nil {
			return nil, fmt.Errorf("build scheme: %w", err)
		}
	}
	return s, nil
}
