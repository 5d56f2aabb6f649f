package harness

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
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

// attachForTest attaches pv to node under an attachment of the test's own
// (not Ferry's naming, which the controller's Detach would take) and
// returns its publish context and the function that detaches it again.
func attachForTest(t T, c client.Client, pv *corev1.PersistentVolume, node string) (map[string]string, func()) {
	t.Helper()
	ctx := context.Background()
	va := &storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: "harness-" + assign.AttachmentName(pv.Spec.CSI.Driver, pv.Spec.CSI.VolumeHandle, node)[len("ferry-"):]},
		Spec: storagev1.VolumeAttachmentSpec{Attacher: pv.Spec.CSI.Driver, NodeName: node,
			Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &pv.Name}}}
	require.NoError(t, c.Create(ctx, va))
	require.NoError(t, wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		return c.Get(ctx, client.ObjectKeyFromObject(va), va) == nil && va.Status.Attached, nil
	}), "attach %s to %s", pv.Name, node)
	return va.Status.AttachmentMetadata, func() {
		require.NoError(t, client.IgnoreNotFound(c.Delete(ctx, va)))
		require.NoError(t, wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			return apierrors.IsNotFound(c.Get(ctx, client.ObjectKeyFromObject(va), &storagev1.VolumeAttachment{})), nil
		}), "detach %s from %s", pv.Name, node)
	}
}
