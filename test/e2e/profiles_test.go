package e2e

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"k8s.io/utils/ptr"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/test/cluster"
)

// profiles are the strict driver profiles both clusters run beside their
// default two (hostpath and ebs, which the other tests use), each node
// plugin a DaemonSet that mounts only what its real driver's manifests
// mount (Longhorn's: pods/ and plugins/kubernetes.io/csi/ of the kubelet
// root).
var profiles = []string{"ceph", "longhorn", "lvm", "topolvm"}

// TestProfilesOnRealNodes: the spec's flow on each strict profile's driver
// on real nodes, Ferry from deploy/ as it ships (no RBAC added for ceph's
// stage Secret): an application pod writes a database into a claim of the
// profile's class; a Clone source replicates it into a Snapshot destination
// of the same class in the other cluster; a claim restored through the
// populator is checked by a pod, every row and the database's integrity.
func TestProfilesOnRealNodes(t *testing.T) {
	need(t)
	for _, p := range profiles {
		t.Run(p, func(t *testing.T) {
			ctx := context.Background()
			ns, class, vsc := "real-"+p, cluster.ProfileClass(p), cluster.ProfileSnapshotClass(p)
			rd, rs := pair(t, ns, "data", volsyncv1alpha1.CopyMethodClone, func(rd *volsyncv1alpha1.ReplicationDestination) {
				rd.Spec.Rsync.StorageClassName, rd.Spec.Rsync.VolumeSnapshotClassName = ptr.To(class), ptr.To(vsc)
			})
			data := claim(ns, "data", nil)
			data.Spec.StorageClassName = ptr.To(class)
			require.NoError(t, src.Client.Create(ctx, data))
			runPod(t, src, cluster.AppPod(ns, "write", "data", "sqlite3 /data/app.db '"+rows(1, 300)+"'"))
			rs.Spec.Trigger = &volsyncv1alpha1.TriggerSpec{Manual: "first"}
			rs.Spec.Rsync.VolumeSnapshotClassName = ptr.To(vsc)
			require.NoError(t, src.Client.Create(ctx, rs))
			waitSynced(t, rs, "first")
			restoreAndCheck(t, rd, "restored", "", check(300))
		})
	}
}
