package controller_test

import (
	"context"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/ferrysync/ferry/internal/testenv"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/test/cluster"
)

// profiles are the strict driver profiles the shared cluster runs beside
// its default two (hostpath and ebs, which every other scenario uses).
var profiles = []string{"ceph", "longhorn", "lvm", "topolvm"}

// driverProfiles runs the spec's flow on each profile's driver: a Clone
// source into a Snapshot destination, both of the profile's class, the
// agents running with the RBAC deploy/ ships. ceph's stage Secret reaches
// the agent only as the controller's copy beside the assignment; Longhorn
// needs attach and sees only kubelet's directories; TopoLVM and
// lvm-localpv do not stage, TopoLVM copies only on the source's node. A
// claim restored from latestImage holds the source's tree.
func driverProfiles(e *env) {
	t, k, ctx := e.t, e.k, context.Background()
	for _, p := range profiles {
		ns, class, vsc := "profile-"+p, cluster.ProfileClass(p), cluster.ProfileSnapshotClass(p)
		e.namespace(ns, privileged)
		data := claimOf(ns, "data", "64Mi", nil)
		data.Spec.StorageClassName = ptr.To(class)
		_, err := e.c.Bind(ctx, data)
		require.NoError(t, err, p)
		e.onVolume(ns, "data", false, func(dir string) { writeApp(t, dir, "1") })
		want := e.tree(ns, "data")
		rd := e.destination(ns, func(rd *volsyncv1alpha1.ReplicationDestination) {
			rd.Spec.Rsync.StorageClassName, rd.Spec.Rsync.VolumeSnapshotClassName = ptr.To(class), ptr.To(vsc)
			rd.Spec.Rsync.Capacity = ptr.To(data.Spec.Resources.Requests[corev1.ResourceStorage])
		})
		e.source(ns, rd, volsyncv1alpha1.CopyMethodClone, &volsyncv1alpha1.TriggerSpec{Manual: "1"},
			func(rs *volsyncv1alpha1.ReplicationSource) { rs.Spec.Rsync.VolumeSnapshotClassName = ptr.To(vsc) })
		e.synced(ns, "rs", "1")
		var image *corev1.TypedLocalObjectReference
		testenv.Eventually(t, p+": the destination's image", time.Minute, func() bool {
			image = e.rd(ns, "rd").Status.LatestImage
			return image != nil
		})
		restored := claimOf(ns, "restored", "64Mi", &corev1.TypedLocalObjectReference{APIGroup: ptr.To("snapshot.storage.k8s.io"),
			Kind: "VolumeSnapshot", Name: image.Name})
		restored.Spec.StorageClassName = ptr.To(class)
		_, err = e.c.Bind(ctx, restored)
		require.NoError(t, err, p)
		assert.Equal(t, want, e.tree(ns, "restored"), "%s: the restored image holds the source's tree", p)
		require.NoError(t, k.Delete(ctx, &volsyncv1alpha1.ReplicationSource{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "rs"}}))
		require.NoError(t, k.Delete(ctx, rd))
	}
}
