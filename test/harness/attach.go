package harness

import (
	"context"
	"fmt"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/assign"
)

// Attached attaches a volume to a node the way the controller does
// (assign.Attach, called again while the attacher works or an old
// attachment is being deleted) and returns the attachment once it is done:
// what a test standing in for the controller writes into an assignment.
func Attached(t testing.TB, c client.Client, v agentv1alpha1.Volume, node string) *agentv1alpha1.Attachment {
	t.Helper()
	var a *agentv1alpha1.Attachment
	var last error
	testenv.Eventually(t, v.PersistentVolumeName+" to attach to "+node, time.Minute, func() bool {
		var ok bool
		a, ok, last = assign.Attach(context.Background(), c, v, node)
		return ok && last == nil
	}, func() string { return fmt.Sprintf("last error: %v", last) })
	return a
}
