package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/test/cluster"
	"github.com/ferrysync/ferry/test/harness"
)

// rows is the sqlite3 statement that appends n rows numbered from first.
func rows(first, n int) string {
	return fmt.Sprintf("create table if not exists t(n int); with recursive c(x) as (select %d union all select x+1 from c where x < %d) insert into t select x from c;",
		first, first+n-1)
}

// check is the script a pod runs to prove a volume holds the database with
// rows 1..n, intact.
func check(n int) string {
	return fmt.Sprintf(`sqlite3 /data/app.db 'pragma integrity_check' | grep -qx ok && sqlite3 /data/app.db 'select count(*) || ":" || sum(n) from t' | grep -qx '%d:%d'`,
		n, n*(n+1)/2)
}

// TestSpecFlowOnRealNodes: the spec's flow as its users run it. An
// application pod writes a sqlite3 database into the source claim; the
// spec's ReplicationDestination (Snapshot) and ReplicationSource (Clone)
// replicate it across clusters through Ferry's pods; a claim restored
// through the populator (dataSourceRef to the destination) is mounted by a
// pod that checks every row and the database's integrity. Then the source
// cluster's leading controller is killed, the other replica takes the
// lease, and a second sync after more rows carries them too.
func TestSpecFlowOnRealNodes(t *testing.T) {
	need(t)
	ctx := context.Background()
	privileged := map[string]string{volsyncv1alpha1.PrivilegedMoversAnnotation: "true"}
	require.NoError(t, src.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "source", Annotations: privileged}}))
	require.NoError(t, dst.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "dest", Annotations: privileged}}))
	require.NoError(t, src.Client.Create(ctx, claim("source", "mysql-pv-claim", nil)))
	runPod(t, src, cluster.AppPod("source", "write-1", "mysql-pv-claim", "sqlite3 /data/app.db '"+rows(1, 1000)+"'"))

	rd := &volsyncv1alpha1.ReplicationDestination{}
	harness.Example(t, "destination.yaml", rd)
	require.NoError(t, dst.Client.Create(ctx, rd))
	require.NoError(t, waitFor(ctx, 2*time.Minute, func() bool {
		return dst.Client.Get(ctx, client.ObjectKeyFromObject(rd), rd) == nil &&
			rd.Status.Rsync != nil && rd.Status.Rsync.Address != nil && rd.Status.Rsync.SSHKeys != nil
	}), "the destination's address and keys")
	secret := &corev1.Secret{}
	require.NoError(t, dst.Client.Get(ctx, client.ObjectKey{Namespace: "dest", Name: *rd.Status.Rsync.SSHKeys}, secret))
	require.NoError(t, src.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "source", Name: secret.Name},
		Type: secret.Type, Data: secret.Data}))

	rs := &volsyncv1alpha1.ReplicationSource{}
	harness.Example(t, "source.yaml", rs)
	rs.Spec.Rsync.Address = rd.Status.Rsync.Address
	rs.Spec.Trigger = &volsyncv1alpha1.TriggerSpec{Manual: "first"}
	require.NoError(t, src.Client.Create(ctx, rs))
	waitSynced(t, rs, "first")
	restoreAndCheck(t, rd, "restored-1", "", check(1000))

	killLeader(t, src)

	runPod(t, src, cluster.AppPod("source", "write-2", "mysql-pv-claim", "sqlite3 /data/app.db '"+rows(1001, 500)+"'"))
	prev := latestImage(t, rd)
	require.NoError(t, src.Client.Get(ctx, client.ObjectKeyFromObject(rs), rs))
	rs.Spec.Trigger.Manual = "second"
	require.NoError(t, src.Client.Update(ctx, rs))
	waitSynced(t, rs, "second")
	restoreAndCheck(t, rd, "restored-2", prev, check(1500))
}

// claim is a 1Gi claim of the default class, or a restore from ref.
func claim(ns, name string, ref *corev1.TypedObjectReference) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:     corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("2Gi")}},
			DataSourceRef: ref}}
}

// runPod runs a pod to completion and fails the test unless it succeeded;
// the pod is deleted after, so its claim is free again.
func runPod(t testing.TB, c *cluster.Cluster, pod *corev1.Pod) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, c.Client.Create(ctx, pod))
	if err := c.WaitPodSucceeded(ctx, pod.Namespace, pod.Name, 3*time.Minute); err != nil {
		logs, _ := c.PodLogs(ctx, pod.Namespace, pod.Name)
		require.NoError(t, err, "pod %s, which said:\n%s\nevents of %s:\n%s", pod.Name, logs, pod.Namespace, c.Events(ctx, pod.Namespace))
	}
	require.NoError(t, c.Client.Delete(ctx, pod))
}

// waitSynced waits for the source's manual sync value and fails unless it
// succeeded.
func waitSynced(t testing.TB, rs *volsyncv1alpha1.ReplicationSource, value string) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, waitFor(ctx, 4*time.Minute, func() bool {
		return src.Client.Get(ctx, client.ObjectKeyFromObject(rs), rs) == nil && rs.Status.LastManualSync == value
	}), "the source's sync %s: %+v", value, rs.Status)
	require.NotNil(t, rs.Status.LatestMoverStatus)
	require.Equal(t, volsyncv1alpha1.MoverResultSuccessful, rs.Status.LatestMoverStatus.Result, rs.Status.LatestMoverStatus.Logs)
}

// latestImage is the destination's latest image, or "".
func latestImage(t testing.TB, rd *volsyncv1alpha1.ReplicationDestination) string {
	t.Helper()
	require.NoError(t, dst.Client.Get(context.Background(), client.ObjectKeyFromObject(rd), rd))
	if rd.Status.LatestImage == nil {
		return ""
	}
	return rd.Status.LatestImage.Name
}

// restoreAndCheck waits for a latest image of rd other than prev, restores
// it through the populator into a new claim and has a pod run script on it.
func restoreAndCheck(t *testing.T, rd *volsyncv1alpha1.ReplicationDestination, name, prev, script string) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, waitFor(ctx, 2*time.Minute, func() bool { img := latestImage(t, rd); return img != "" && img != prev }),
		"a new image on the destination")
	ref := &corev1.TypedObjectReference{APIGroup: ptr.To(volsyncv1alpha1.GroupVersion.Group), Kind: "ReplicationDestination",
		Name: rd.Name}
	restored := claim(rd.Namespace, name, ref)
	restored.Spec.StorageClassName = rd.Spec.Rsync.StorageClassName // the images' driver's class, when not the default
	require.NoError(t, dst.Client.Create(ctx, restored))
	runPod(t, dst, cluster.AppPod(rd.Namespace, "check-"+name, name, script))
}

// killLeader deletes the pod that holds the controller's lease at once
// (no grace) and waits for the other replica to take it.
func killLeader(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	ctx := context.Background()
	lease := &coordinationv1.Lease{}
	key := client.ObjectKey{Namespace: ferryNamespace, Name: "controller.ferrysync.io"}
	require.NoError(t, c.Client.Get(ctx, key, lease))
	require.NotNil(t, lease.Spec.HolderIdentity)
	leader, _, _ := strings.Cut(*lease.Spec.HolderIdentity, "_")
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ferryNamespace, Name: leader}}
	require.NoError(t, c.Client.Delete(ctx, pod, client.GracePeriodSeconds(0)))
	require.NoError(t, waitFor(ctx, 2*time.Minute, func() bool {
		return c.Client.Get(ctx, key, lease) == nil && lease.Spec.HolderIdentity != nil &&
			!strings.HasPrefix(*lease.Spec.HolderIdentity, leader+"_")
	}), "another replica takes the lease from %s", leader)
	// The new leader's event is written after it takes the lease, and may
	// land a moment later on a busy machine.
	var elected []string
	require.NoError(t, waitFor(ctx, time.Minute, func() bool {
		events := &corev1.EventList{}
		require.NoError(t, c.Client.List(ctx, events, client.InNamespace(ferryNamespace)))
		elected = nil
		for _, e := range events.Items {
			if e.Reason == "LeaderElection" {
				elected = append(elected, e.Message)
			}
		}
		return len(elected) >= 2
	}), "each leader recorded its election: %v", elected)
}
