// Package api holds Ferry's API packages: v1alpha1 is VolSync's
// volsync.backube API as Ferry serves it, agent/v1alpha1 the internal
// MountAssignment between controller and node agents. This package itself
// only carries the tests that keep the generated code and CRDs in step with
// the types.
package api
