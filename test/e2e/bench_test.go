package e2e

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/keys"
	"github.com/ferrysync/ferry/test/cluster"
)

// benchRounds is how many syncs each way the benchmark times.
const benchRounds = 10

// vsDestination is VolSync's rsync destination as its mover script runs
// it, in a pod of its own per sync: stock sshd with the Secret's host key,
// the source's key forced (restrict) to rrsync on the volume, `shutdown N`
// ending the pod.
const vsDestination = `set -e; mkdir -p /run/sshd /etc/vs
install -m 600 /keys/destination /etc/vs/host
printf '#!/bin/sh\ncase "$SSH_ORIGINAL_COMMAND" in shutdown*) touch /tmp/shutdown ;; "rsync "*) exec /usr/bin/rrsync /data ;; *) exit 1 ;; esac\n' > /etc/vs/cmd
chmod 755 /etc/vs/cmd
printf 'command="/etc/vs/cmd",restrict %s' "$(cat /keys/source.pub)" > /etc/vs/auth
printf 'Port 8022\nHostKey /etc/vs/host\nAuthorizedKeysFile /etc/vs/auth\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n' > /etc/vs/cfg
/usr/sbin/sshd -e -f /etc/vs/cfg
while [ ! -e /tmp/shutdown ]; do sleep 0.1; done`

// vsSource is VolSync's rsync source as its mover script runs it: stock
// ssh with the destination's host key pinned, VolSync's rsync flags,
// retried until the destination listens, then `shutdown 0`.
const vsSource = `set -e; install -m 600 /keys/source /tmp/id
echo "[%[1]s]:8022 $(cat /keys/destination.pub)" > /tmp/kh
SSH="ssh -i /tmp/id -p 8022 -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/tmp/kh -o ConnectTimeout=5 -o BatchMode=yes -o IdentitiesOnly=yes -F /dev/null"
until rsync -aAhHSxz --delete --itemize-changes --info=stats2,misc2 -e "$SSH" /data/ root@%[1]s:.; do sleep 1; done
$SSH root@%[1]s shutdown 0`

// BenchmarkPodPerSyncVersusAgent: one sync of the same small, unchanged
// volume, across the two clusters of real nodes, timed from the trigger to
// the source's completion: Ferry's path (a ReplicationSource, Clone, the
// agents already running) against VolSync's shape (a clone, a Job and pod
// per sync on each side, stock sshd and ssh + rsync with VolSync's flags,
// from the same image). Median of benchRounds each, in the same run.
func BenchmarkPodPerSyncVersusAgent(b *testing.B) {
	if src == nil {
		b.Skip("needs real-node clusters; runs in make bench")
	}
	ctx := context.Background()
	rd, rs := pair(b, "bench", "data", volsyncv1alpha1.CopyMethodClone)
	require.NoError(b, src.Client.Create(ctx, claim("bench", "data", nil)))
	runPod(b, src, cluster.AppPod("bench", "fill", "data",
		`for i in $(seq 1 50); do head -c 65536 /dev/urandom > /data/f$i; done; mkdir /data/d; echo x > /data/d/x`))

	var ferry []time.Duration
	rs.Spec.Trigger = &volsyncv1alpha1.TriggerSpec{Manual: "0"}
	require.NoError(b, src.Client.Create(ctx, rs))
	waitSynced(b, rs, "0") // the first sync sends everything; the rounds send nothing new
	for i := 1; i <= benchRounds; i++ {
		require.NoError(b, src.Client.Get(ctx, client.ObjectKeyFromObject(rs), rs))
		rs.Spec.Trigger.Manual = strconv.Itoa(i)
		start := time.Now()
		require.NoError(b, src.Client.Update(ctx, rs))
		waitSynced(b, rs, strconv.Itoa(i))
		ferry = append(ferry, time.Since(start))
	}
	require.NoError(b, src.Client.Delete(ctx, rs))

	// VolSync's destination mover mounts the Secret with its own host key
	// (volsync-rsync-dst-dest-<name>), its source the one the user copied.
	srcKeys, dstKeys := *rd.Status.Rsync.SSHKeys, keys.NamesFor(keys.Destination, rd.Name).Destination
	require.NoError(b, dst.Client.Create(ctx, claim("bench", "vs-dst", nil)))
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: "vs-dst"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "vs-dst"},
			Ports: []corev1.ServicePort{{Port: 8022, TargetPort: intstr.FromInt32(8022)}}}}
	require.NoError(b, dst.Client.Create(ctx, svc))
	var volsync []time.Duration
	for i := 0; i <= benchRounds; i++ {
		start := time.Now()
		name := fmt.Sprintf("vs-%d", i)
		require.NoError(b, dst.Client.Create(ctx, job(name, "vs-dst", dstKeys, vsDestination, map[string]string{"app": "vs-dst"})))
		clone := claim("bench", name, &corev1.TypedObjectReference{Kind: "PersistentVolumeClaim", Name: "data"})
		require.NoError(b, src.Client.Create(ctx, clone))
		require.NoError(b, src.Client.Create(ctx, job(name, name, srcKeys, fmt.Sprintf(vsSource, svc.Spec.ClusterIP), nil)))
		waitJob(b, src, name)
		if i > 0 { // round 0 sends everything, as Ferry's first sync did
			volsync = append(volsync, time.Since(start))
		}
		waitJob(b, dst, name)
		for _, c := range []*cluster.Cluster{src, dst} {
			require.NoError(b, c.Client.Delete(ctx, &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: name}},
				client.PropagationPolicy(metav1.DeletePropagationForeground)))
		}
		require.NoError(b, waitFor(ctx, time.Minute, func() bool {
			pods := &corev1.PodList{}
			return dst.Client.List(ctx, pods, client.InNamespace("bench"), client.MatchingLabels{"app": "vs-dst"}) == nil && len(pods.Items) == 0
		}), "the destination pod gone before the next sync")
		require.NoError(b, src.Client.Delete(ctx, clone))
	}
	require.NoError(b, dst.Client.Delete(ctx, rd))
	f, v := median(ferry), median(volsync)
	b.ReportMetric(f.Seconds(), "s/sync-ferry")
	b.ReportMetric(v.Seconds(), "s/sync-podpersync")
	b.ReportMetric(v.Seconds()/f.Seconds(), "podpersync/ferry")
	b.Logf("trigger → source done, median of %d unchanged syncs: Ferry %.2fs (%v), pod per sync %.2fs (%v): %.1f×",
		benchRounds, f.Seconds(), ferry, v.Seconds(), volsync, v.Seconds()/f.Seconds())
}

// job is a Job of one pod of the application image that runs script with
// claim at /data and the key Secret at /keys, as VolSync's mover Jobs do.
func job(name, claim, secret, script string, labels map[string]string) *batchv1.Job {
	pod := cluster.AppPod("bench", name, claim, script)
	pod.Spec.Containers[0].VolumeMounts = append(pod.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: "keys", MountPath: "/keys"})
	pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: "keys", VolumeSource: corev1.VolumeSource{
		Secret: &corev1.SecretVolumeSource{SecretName: secret, DefaultMode: ptr.To[int32](0o400)}}})
	return &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: name},
		Spec: batchv1.JobSpec{BackoffLimit: ptr.To[int32](0), Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: pod.Spec}}}
}

// waitJob waits for a Job to succeed.
func waitJob(b *testing.B, c *cluster.Cluster, name string) {
	b.Helper()
	ctx := context.Background()
	j := &batchv1.Job{}
	err := waitFor(ctx, 3*time.Minute, func() bool {
		return c.Client.Get(ctx, client.ObjectKey{Namespace: "bench", Name: name}, j) == nil && (j.Status.Succeeded > 0 || j.Status.Failed > 0)
	})
	if err != nil || j.Status.Failed > 0 {
		pods := &corev1.PodList{}
		_ = c.Client.List(ctx, pods, client.InNamespace("bench"), client.MatchingLabels{"job-name": name})
		for _, p := range pods.Items {
			logs, _ := c.PodLogs(ctx, p.Namespace, p.Name)
			b.Logf("pod %s (%s): %s", p.Name, p.Status.Phase, logs)
		}
		b.Fatalf("job %s: %v, %d failed", name, err, j.Status.Failed)
	}
}

// median of durations.
func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
