package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apiresource "k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/test/cluster"
)

// writeForever appends files f-1, f-2, ... to /data, each whole (written
// aside, then renamed), f-N holding the lines 1..N; past 200 it paces
// itself, as a running application would.
const writeForever = `i=0; while :; do i=$((i+1)); seq 1 $i > /data/.next && mv /data/.next /data/f-$i; if [ $i -gt 200 ]; then sleep 0.05; fi; done`

// checkWhole is what a pod runs on the replica: f-1..f-200 (written before
// the sync started) are there, and every f-N there is whole.
const checkWhole = `for n in $(seq 1 200); do test -e /data/f-$n || exit 1; done; ` +
	`for f in /data/f-*; do n=${f##*/f-}; test "$(wc -l < $f)" -eq "$n" && test "$(tail -n1 $f)" = "$n" || exit 1; done`

// TestDirectWhileTheApplicationWrites: a Direct source copies the claim an
// application pod is writing to, through the kubelet's own mount of it on
// the pod's node. The replica, restored through the populator and checked
// by a pod, holds every file written before the sync began, and no file
// half-written.
func TestDirectWhileTheApplicationWrites(t *testing.T) {
	need(t)
	ctx := context.Background()
	rd, rs := pair(t, "direct", "app-data", volsyncv1alpha1.CopyMethodDirect)
	require.NoError(t, src.Client.Create(ctx, claim("direct", "app-data", nil)))
	writer := cluster.AppPod("direct", "writer", "app-data", writeForever)
	writer.Spec.RestartPolicy = corev1.RestartPolicyAlways
	writer.Spec.Containers[0].ReadinessProbe = &corev1.Probe{PeriodSeconds: 1,
		ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"test", "-e", "/data/f-200"}}}}
	require.NoError(t, src.Client.Create(ctx, writer))
	require.NoError(t, waitFor(ctx, 3*time.Minute, func() bool {
		return src.Client.Get(ctx, client.ObjectKeyFromObject(writer), writer) == nil && podReady(writer)
	}), "the writer has written 200 files")

	rs.Spec.Trigger = &volsyncv1alpha1.TriggerSpec{Manual: "while-writing"}
	require.NoError(t, src.Client.Create(ctx, rs))
	waitSynced(t, rs, "while-writing")
	require.NoError(t, src.Client.Get(ctx, client.ObjectKeyFromObject(writer), writer))
	require.True(t, podReady(writer), "the application ran through the sync, undisturbed")
	restoreAndCheck(t, rd, "replica", "", checkWhole)
	require.NoError(t, src.Client.Delete(ctx, writer, client.GracePeriodSeconds(0)))
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// pair creates namespace ns in both clusters (privileged movers), a
// Snapshot ReplicationDestination there, copies its key Secret to the
// source cluster, and returns it with a ReplicationSource of claim (not yet
// created) that points at it, as the spec's flow does; mods change the
// destination before it is created.
func pair(t testing.TB, ns, claim string, method volsyncv1alpha1.CopyMethodType, mods ...func(*volsyncv1alpha1.ReplicationDestination)) (*volsyncv1alpha1.ReplicationDestination, *volsyncv1alpha1.ReplicationSource) {
	t.Helper()
	ctx := context.Background()
	privileged := map[string]string{volsyncv1alpha1.PrivilegedMoversAnnotation: "true"}
	for _, c := range []*cluster.Cluster{src, dst} {
		require.NoError(t, c.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Annotations: privileged}}))
	}
	rd := &volsyncv1alpha1.ReplicationDestination{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: claim},
		Spec: volsyncv1alpha1.ReplicationDestinationSpec{Rsync: &volsyncv1alpha1.ReplicationDestinationRsyncSpec{
			ReplicationDestinationVolumeOptions: volsyncv1alpha1.ReplicationDestinationVolumeOptions{
				CopyMethod: volsyncv1alpha1.CopyMethodSnapshot, Capacity: ptr.To(apiresource.MustParse("2Gi")),
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}},
			ServiceType: ptr.To(corev1.ServiceTypeClusterIP)}}}
	for _, mod := range mods {
		mod(rd)
	}
	require.NoError(t, dst.Client.Create(ctx, rd))
	require.NoError(t, waitFor(ctx, 2*time.Minute, func() bool {
		return dst.Client.Get(ctx, client.ObjectKeyFromObject(rd), rd) == nil &&
			rd.Status.Rsync != nil && rd.Status.Rsync.Address != nil && rd.Status.Rsync.SSHKeys != nil
	}), "the destination's address and keys")
	secret := &corev1.Secret{}
	require.NoError(t, dst.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: *rd.Status.Rsync.SSHKeys}, secret))
	require.NoError(t, src.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: secret.Name},
		Type: secret.Type, Data: secret.Data}))
	rs := &volsyncv1alpha1.ReplicationSource{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: claim},
		Spec: volsyncv1alpha1.ReplicationSourceSpec{SourcePVC: claim, Rsync: &volsyncv1alpha1.ReplicationSourceRsyncSpec{
			ReplicationSourceVolumeOptions: volsyncv1alpha1.ReplicationSourceVolumeOptions{CopyMethod: method},
			SSHKeys:                        &secret.Name, Address: rd.Status.Rsync.Address}}}
	return rd, rs
}
