package controller_test

import (
	"context"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/ferrysync/ferry/internal/testenv"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/snapshot"
	"github.com/ferrysync/ferry/pkg/controller/takeover"
	"github.com/ferrysync/ferry/pkg/transfer/sshkeys"
	"github.com/ferrysync/ferry/test/harness"
)

// byVolSync is the label VolSync's controller puts on what it makes.
var byVolSync = map[string]string{takeover.CreatedByLabel: takeover.CreatedByVolSync}

// takeoverVolSync: with Ferry's controller down, a pair is left as VolSync's
// controller leaves it when stopped in the middle of a destination's sync —
// its three generated key Secrets, the destination claim holding the last
// sync's data, the latestImage snapshot, its Service with a ClusterIP and
// a selector for mover pods, the mover Job still running, and both CRs'
// status — and the application writes a little more. Then Ferry's
// controller starts: it waits for VolSync's mover, removes its Job once it
// has finished, and serves the same claim (same UID) behind the same
// Service address with the same keys; the next sync sends about the
// change only, the new image holds the source, and VolSync's image goes.
func takeoverVolSync(e *env) {
	t, k, ctx := e.t, e.k, context.Background()
	const ns = "takeover"
	e.ctrl.Kill()
	started := false
	defer func() {
		if !started {
			e.ctrl.Start()
		}
	}()
	e.app(ns, "1")
	e.onVolume(ns, "data", false, func(dir string) { harness.WriteRandom(t, filepath.Join(dir, "big"), 32<<20) })

	rd := leftByVolSync(e, ns)
	svc := &corev1.Service{}
	require.NoError(t, k.Get(ctx, client.ObjectKey{Namespace: ns, Name: "volsync-rsync-dst-rd"}, svc))
	claim := &corev1.PersistentVolumeClaim{}
	require.NoError(t, k.Get(ctx, client.ObjectKey{Namespace: ns, Name: "volsync-rd-dst"}, claim))
	mainKeys := e.secret(ns, "volsync-rsync-dst-main-rd")
	oldImage := rd.Status.LatestImage.Name
	rs := &volsyncv1alpha1.ReplicationSource{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "rs"},
		Spec: volsyncv1alpha1.ReplicationSourceSpec{SourcePVC: "data", Trigger: &volsyncv1alpha1.TriggerSpec{Manual: "1"},
			Rsync: &volsyncv1alpha1.ReplicationSourceRsyncSpec{ReplicationSourceVolumeOptions: volsyncv1alpha1.ReplicationSourceVolumeOptions{CopyMethod: volsyncv1alpha1.CopyMethodSnapshot},
				SSHKeys: ptr.To("volsync-rsync-dst-src-rd"), Address: ptr.To(svc.Spec.ClusterIP)}}}
	require.NoError(t, k.Create(ctx, rs))
	rs.Status = volsyncv1alpha1.ReplicationSourceStatus{SyncStatus: volsyncv1alpha1.SyncStatus{LastManualSync: "1",
		LastSyncTime: ptr.To(metav1.Now()), Conditions: []metav1.Condition{{Type: volsyncv1alpha1.ConditionSynchronizing,
			Status: metav1.ConditionFalse, Reason: volsyncv1alpha1.SynchronizingReasonManual, Message: "Waiting for manual trigger",
			LastTransitionTime: metav1.Now()}}}, Rsync: &volsyncv1alpha1.ReplicationSourceRsyncStatus{}}
	require.NoError(t, k.Status().Update(ctx, rs))
	e.onVolume(ns, "data", false, func(dir string) { writeApp(t, dir, "2") })
	want := e.tree(ns, "data")

	e.ctrl.Start()
	started = true
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "volsync-rsync-dst-rd"}}
	testenv.Eventually(t, "Ferry to say it waits for VolSync's mover", time.Minute, func() bool {
		c := condition(&e.rd(ns, "rd").Status.SyncStatus, volsyncv1alpha1.ConditionSynchronizing)
		if strings.Contains(c.Message, "VolSync's mover") || strings.Contains(c.Message, "in use by pod") {
			t.Logf("the destination: %s", c.Message)
			return true
		}
		return false
	})
	assert.False(t, e.assigned(string(rd.UID)), "Ferry serves nothing while VolSync's mover runs")
	finishJob(e, job)
	testenv.Eventually(t, "Ferry to remove VolSync's finished mover Job", time.Minute, func() bool { return gone(k, job) })
	assert.NotEmpty(t, e.events(rd, takeover.EventMoverJobRemoved), "an event says the Job went")

	e.trigger(ns, "rs", "2")
	rs = e.synced(ns, "rs", "2")
	m := regexp.MustCompile(`Ferry: sent (\d+) bytes`).FindStringSubmatch(rs.Status.LatestMoverStatus.Logs)
	require.NotNil(t, m, rs.Status.LatestMoverStatus.Logs)
	sent, err := strconv.ParseInt(m[1], 10, 64)
	require.NoError(t, err)
	t.Logf("the first sync after the takeover: %s", rs.Status.LatestMoverStatus.Logs)
	assert.Less(t, sent, int64(4<<20), "the first sync after the takeover sends about the change (the volume holds 32 MiB more)")
	img := e.image(ns, "rd", oldImage)
	assert.Equal(t, want, e.restored(ns, img), "the new image holds the source")

	after := e.rd(ns, "rd")
	assert.Equal(t, mainKeys, e.secret(ns, "volsync-rsync-dst-main-rd"), "no new key")
	assert.Equal(t, "volsync-rsync-dst-src-rd", ptr.Deref(after.Status.Rsync.SSHKeys, ""))
	require.NoError(t, k.Get(ctx, client.ObjectKeyFromObject(svc), svc))
	assert.Equal(t, rd.Status.Rsync.Address, after.Status.Rsync.Address, "same Service address")
	assert.Equal(t, *rd.Status.Rsync.Address, svc.Spec.ClusterIP)
	assert.Empty(t, svc.Spec.Selector, "the Service points at the agent, not at mover pods")
	now := &corev1.PersistentVolumeClaim{}
	require.NoError(t, k.Get(ctx, client.ObjectKeyFromObject(claim), now))
	assert.Equal(t, claim.UID, now.UID, "the same claim: no copy")
	testenv.Eventually(t, "VolSync's image to go once Ferry's replaces it", time.Minute, func() bool {
		s, err := snapshot.Get(ctx, k, ns, oldImage)
		require.NoError(t, err)
		return s == nil
	})
}

// leftByVolSync makes destination "rd" in ns as VolSync's controller
// leaves it mid-sync: generated keys, its claim holding a copy of "data",
// the latestImage snapshot of that claim, the Service, a running mover Job
// on the claim, and the status. It returns the CR.
func leftByVolSync(e *env, ns string) *volsyncv1alpha1.ReplicationDestination {
	t, k, ctx := e.t, e.k, context.Background()
	rd := &volsyncv1alpha1.ReplicationDestination{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "rd"},
		Spec: volsyncv1alpha1.ReplicationDestinationSpec{Rsync: &volsyncv1alpha1.ReplicationDestinationRsyncSpec{
			ReplicationDestinationVolumeOptions: volsyncv1alpha1.ReplicationDestinationVolumeOptions{CopyMethod: volsyncv1alpha1.CopyMethodSnapshot,
				Capacity: ptr.To(resource.MustParse("1Gi")), AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}}}}}
	require.NoError(t, k.Create(ctx, rd))
	create := func(obj client.Object) {
		t.Helper()
		obj.SetNamespace(ns)
		labels := map[string]string{}
		for k, v := range obj.GetLabels() {
			labels[k] = v
		}
		for k, v := range byVolSync {
			labels[k] = v
		}
		obj.SetLabels(labels)
		require.NoError(t, controllerutil.SetControllerReference(rd, obj, k.Scheme()))
		require.NoError(t, k.Create(ctx, obj))
	}
	volSyncKeys(t, create)
	image := volSyncImage(e, ns, create)
	svc := volSyncMover(rd, create)

	start := metav1.NewTime(time.Now().Add(-time.Hour))
	rd.Status = volsyncv1alpha1.ReplicationDestinationStatus{SyncStatus: volsyncv1alpha1.SyncStatus{
		LastSyncTime: ptr.To(metav1.NewTime(start.Add(-time.Minute))), LastSyncStartTime: &start,
		LastSyncDuration:  &metav1.Duration{Duration: 40 * time.Second},
		LatestMoverStatus: &volsyncv1alpha1.MoverStatus{Result: volsyncv1alpha1.MoverResultSuccessful},
		Conditions: []metav1.Condition{{Type: volsyncv1alpha1.ConditionSynchronizing, Status: metav1.ConditionTrue,
			Reason: volsyncv1alpha1.SynchronizingReasonSync, Message: "Synchronization in-progress", LastTransitionTime: start}}},
		LatestImage: snapshot.Ref(image),
		Rsync: &volsyncv1alpha1.ReplicationDestinationRsyncStatus{Address: ptr.To(svc.Spec.ClusterIP), Port: ptr.To(int32(22)),
			SSHKeys: ptr.To("volsync-rsync-dst-src-rd")}}
	require.NoError(t, k.Status().Update(ctx, rd))
	return rd
}

// volSyncKeys creates the key Secrets VolSync's destination generates.
func volSyncKeys(t testing.TB, create func(client.Object)) {
	dst, src, err := sshkeys.Secrets()
	require.NoError(t, err)
	main := map[string][]byte{}
	for _, m := range []map[string][]byte{dst, src} {
		for f, v := range m {
			main[f] = v
		}
	}
	pick := func(fields ...string) map[string][]byte {
		out := map[string][]byte{}
		for _, f := range fields {
			out[f] = main[f]
		}
		return out
	}
	create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "volsync-rsync-dst-main-rd"}, Data: main})
	create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "volsync-rsync-dst-src-rd"},
		Data: pick(sshkeys.SourcePrivate, sshkeys.SourcePublic, sshkeys.DestinationPublic)})
	create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "volsync-rsync-dst-dest-rd"},
		Data: pick(sshkeys.DestinationPrivate, sshkeys.DestinationPublic, sshkeys.SourcePublic)})
}

// volSyncImage makes VolSync's destination claim, a clone of "data" (the
// last sync's data), and its ready latestImage snapshot, and returns the
// snapshot's name.
func volSyncImage(e *env, ns string, create func(client.Object)) string {
	t, k, ctx := e.t, e.k, context.Background()
	// The last sync's data: a clone of the source as it is now.
	create(&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "volsync-rd-dst"},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:  corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
			DataSource: &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: "data"}}})
	testenv.Eventually(t, "VolSync's destination claim to be bound", time.Minute, func() bool {
		pvc := &corev1.PersistentVolumeClaim{}
		require.NoError(t, k.Get(ctx, client.ObjectKey{Namespace: ns, Name: "volsync-rd-dst"}, pvc))
		return pvc.Status.Phase == corev1.ClaimBound
	})
	image := "volsync-rd-dst-20260101000000"
	snap := snapshot.New()
	snap.SetName(image)
	snap.Object["spec"] = map[string]any{"source": map[string]any{"persistentVolumeClaimName": "volsync-rd-dst"}}
	create(snap)
	testenv.Eventually(t, "VolSync's image to be ready", time.Minute, func() bool {
		s, err := snapshot.Get(ctx, k, ns, image)
		require.NoError(t, err)
		ready, _, err := snapshot.Ready(s)
		require.NoError(t, err)
		return ready
	})
	return image
}

// volSyncMover creates the destination's Service and the mover Job on its
// claim, as VolSync leaves them mid-sync, and returns the Service.
func volSyncMover(rd *volsyncv1alpha1.ReplicationDestination, create func(client.Object)) *corev1.Service {
	moverPods := map[string]string{"app.kubernetes.io/name": "dst-rd", "app.kubernetes.io/component": "rsync-mover",
		"app.kubernetes.io/part-of": "volsync"}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "volsync-rsync-dst-rd"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, Selector: moverPods,
			Ports: []corev1.ServicePort{{Name: "ssh", Port: 22, TargetPort: intstr.FromInt32(8022), Protocol: corev1.ProtocolTCP}}}}
	create(svc)
	create(&batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "volsync-rsync-dst-rd", Labels: map[string]string{"volsync.backube/cleanup": string(rd.UID)}},
		Spec: batchv1.JobSpec{BackoffLimit: ptr.To(int32(2)), Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: moverPods},
			Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever,
				Containers: []corev1.Container{{Name: "rsync", Image: "quay.io/backube/volsync:0.13", Command: []string{"/mover-rsync/destination.sh"},
					VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}}},
				Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
					PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "volsync-rd-dst"}}}}}}}})
	return svc
}

// finishJob plays the kubelet for a Job's pod (no kubelet runs here): the
// pod succeeds, and kube-controller-manager's Job controller completes the
// Job.
func finishJob(e *env, job *batchv1.Job) {
	t, k, ctx := e.t, e.k, context.Background()
	testenv.Eventually(t, "the Job controller to finish Job "+job.Name, time.Minute, func() bool {
		pods := &corev1.PodList{}
		require.NoError(t, k.List(ctx, pods, client.InNamespace(job.Namespace), client.MatchingLabels{"job-name": job.Name}))
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.Status.Phase == corev1.PodSucceeded {
				continue
			}
			p.Status.Phase = corev1.PodSucceeded
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "rsync", State: corev1.ContainerState{
				Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed"}}}}
			_ = k.Status().Update(ctx, p) // a conflict is tried again
		}
		if err := k.Get(ctx, client.ObjectKeyFromObject(job), job); err != nil {
			return client.IgnoreNotFound(err) == nil
		}
		return job.Status.Succeeded > 0
	})
}
