package controller_test

import (
	"context"
	"fmt"
	"maps"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	"golang.org/x/crypto/ssh"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/cycle"
	"github.com/ferrysync/ferry/pkg/controller/populator"
	"github.com/ferrysync/ferry/pkg/controller/source"
	"github.com/ferrysync/ferry/pkg/transfer/sshkeys"
	"github.com/ferrysync/ferry/test/cluster"
	"github.com/ferrysync/ferry/test/harness"
)

// app makes namespace ns, where privileged movers are allowed, with claim
// "data" holding writeApp's generation.
func (e *env) app(ns, generation string) {
	e.t.Helper()
	e.namespace(ns, privileged)
	e.claim(ns, "data", "1Gi", nil)
	e.onVolume(ns, "data", false, func(dir string) { writeApp(e.t, dir, generation) })
}

// pair makes, in namespace ns, a Snapshot
// destination "rd" with generated keys and a source "rs" of copyMethod of
// claim "data" into it, once the destination has an address; mods change
// the source before it is created.
func (e *env) pair(ns string, method volsyncv1alpha1.CopyMethodType, trigger *volsyncv1alpha1.TriggerSpec, mods ...func(*volsyncv1alpha1.ReplicationSource)) {
	e.source(ns, e.destination(ns), method, trigger, mods...)
}

// source makes source "rs" of claim "data" into destination rd, in the same
// namespace; mods change it before it is created.
func (e *env) source(ns string, rd *volsyncv1alpha1.ReplicationDestination, method volsyncv1alpha1.CopyMethodType,
	trigger *volsyncv1alpha1.TriggerSpec, mods ...func(*volsyncv1alpha1.ReplicationSource)) {
	t, k, ctx := e.t, e.k, context.Background()
	rs := &volsyncv1alpha1.ReplicationSource{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "rs"},
		Spec: volsyncv1alpha1.ReplicationSourceSpec{SourcePVC: "data", Trigger: trigger,
			Rsync: &volsyncv1alpha1.ReplicationSourceRsyncSpec{ReplicationSourceVolumeOptions: volsyncv1alpha1.ReplicationSourceVolumeOptions{CopyMethod: method},
				SSHKeys: rd.Status.Rsync.SSHKeys, Address: rd.Status.Rsync.Address}}}
	for _, mod := range mods {
		mod(rs)
	}
	require.NoError(t, k.Create(ctx, rs))
}

// tempClaim: with cleanupTempPVC the claim Ferry provisioned goes after
// each successful sync, once its snapshot is latestImage; the next sync
// gets a new claim and sends everything again.
func tempClaim(e *env) {
	t, k, ctx := e.t, e.k, context.Background()
	e.app("tempclaim", "1")
	want := e.tree("tempclaim", "data")
	rd := e.destination("tempclaim", func(rd *volsyncv1alpha1.ReplicationDestination) { rd.Spec.Rsync.CleanupTempPVC = true })
	claimUID := func() types.UID {
		pvc := &corev1.PersistentVolumeClaim{}
		if err := k.Get(ctx, client.ObjectKey{Namespace: "tempclaim", Name: "volsync-rd-dst"}, pvc); err != nil || pvc.DeletionTimestamp != nil {
			return ""
		}
		return pvc.UID
	}
	first := claimUID()
	require.NotEmpty(t, first, "the destination's claim is provisioned")
	e.source("tempclaim", rd, volsyncv1alpha1.CopyMethodClone, &volsyncv1alpha1.TriggerSpec{Manual: "1"},
		func(rs *volsyncv1alpha1.ReplicationSource) {
			rs.Annotations = map[string]string{volsyncv1alpha1.CompressionAnnotation: "lz4"} // a user's choice reaches the agent
		})
	e.synced("tempclaim", "rs", "1")
	img := e.image("tempclaim", "rd", "")
	testenv.Eventually(t, "a new claim for the next sync", time.Minute, func() bool {
		uid := claimUID()
		return uid != "" && uid != first
	})
	assert.Equal(t, want, e.restored("tempclaim", img), "the image holds the sync")
	res := e.trigger("tempclaim", "rs", "2")
	assert.Contains(t, res.Status.LatestMoverStatus.Logs, "sent", "the second sync ran")
	assert.Equal(t, want, e.restored("tempclaim", e.image("tempclaim", "rd", img)), "into a new claim, all of it")
}

// rotate: keys replaced in the user's Secret take effect at the next sync,
// with nothing restarted: the copy in Ferry's namespace follows, the agent
// serves the destination with the new keys, and the old source key no
// longer opens it.
func rotate(e *env) {
	t, k, ctx := e.t, e.k, context.Background()
	e.app("rotate", "1")
	// One Secret serves both sides: VolSync's fields do not overlap.
	keyData := func() (map[string][]byte, *sshkeys.Source) {
		d, s, err := sshkeys.Secrets()
		require.NoError(t, err)
		src, err := sshkeys.ParseSource(s)
		require.NoError(t, err)
		maps.Copy(d, s)
		return d, src
	}
	data, oldKeys := keyData()
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "rotate", Name: "keys"}, Data: data}
	require.NoError(t, k.Create(ctx, secret))
	userKeys := ptr.To("keys")
	rd := e.destination("rotate", func(rd *volsyncv1alpha1.ReplicationDestination) { rd.Spec.Rsync.SSHKeys = userKeys })
	e.source("rotate", rd, volsyncv1alpha1.CopyMethodDirect, &volsyncv1alpha1.TriggerSpec{Manual: "1"},
		func(rs *volsyncv1alpha1.ReplicationSource) { rs.Spec.Rsync.SSHKeys = userKeys })
	e.synced("rotate", "rs", "1")

	var ma agentv1alpha1.MountAssignment
	require.NoError(t, k.Get(ctx, client.ObjectKey{Namespace: harness.Namespace, Name: "rd-" + string(rd.UID)}, &ma))
	ep := net.JoinHostPort(ma.Status.Endpoint.Address, strconv.Itoa(int(ma.Status.Endpoint.Port)))
	authenticates := func(id ssh.Signer) error {
		c, err := ssh.Dial("tcp", ep, &ssh.ClientConfig{User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(id)},
			HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 5 * time.Second}) // only the client key is under test
		if err == nil {
			c.Close()
		}
		return err
	}
	require.NoError(t, authenticates(oldKeys.Identity), "the first keys open the destination")

	data, newKeys := keyData()
	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		require.NoError(t, k.Get(ctx, client.ObjectKeyFromObject(secret), secret))
		secret.Data = data
		return k.Update(ctx, secret)
	}))
	var err error
	testenv.Eventually(t, "the old source key to stop opening the destination", time.Minute, func() bool {
		err = authenticates(oldKeys.Identity)
		return err != nil && strings.Contains(err.Error(), "unable to authenticate")
	}, func() string { return fmt.Sprint(err) })
	e.trigger("rotate", "rs", "2")
	testenv.Eventually(t, "the new source key to open the destination", 30*time.Second, func() bool {
		return authenticates(newKeys.Identity) == nil
	})
}

// copyTriggers: a source claim annotated use-copy-trigger gets its copy
// only once the application sets copy-trigger; until then the claim says
// WaitingForTrigger (and since when), past the timeout latestMoverStatus
// and an event say the sync is late; then the copy is taken, the claim says
// Completed with the value used, and the image holds the data.
func copyTriggers(e *env) {
	t, k, ctx := e.t, e.k, context.Background()
	e.app("copytrigger", "1")
	want := e.tree("copytrigger", "data")
	annotate := func(key, value string) {
		patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, key, value)
		require.NoError(t, k.Patch(ctx, &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "copytrigger", Name: "data"}},
			client.RawPatch(types.MergePatchType, []byte(patch))))
	}
	claimAnnotations := func() map[string]string {
		pvc := &corev1.PersistentVolumeClaim{}
		require.NoError(t, k.Get(ctx, client.ObjectKey{Namespace: "copytrigger", Name: "data"}, pvc))
		return pvc.Annotations
	}
	annotate(source.UseCopyTriggerAnnotation, "true")
	e.pair("copytrigger", volsyncv1alpha1.CopyMethodSnapshot, &volsyncv1alpha1.TriggerSpec{Manual: "1"})
	testenv.Eventually(t, "the claim to say it waits for its trigger", time.Minute, func() bool {
		a := claimAnnotations()
		return a[source.LatestCopyStatusAnnotation] == source.CopyStatusWaitingForTrigger && a[source.LatestCopyWaitingSinceAnnotation] != ""
	})
	// The status is written after the claim's annotations.
	testenv.Eventually(t, "the condition to name the copy trigger", 30*time.Second, func() bool {
		return strings.Contains(condition(&e.rs("copytrigger", "rs").Status.SyncStatus, volsyncv1alpha1.ConditionSynchronizing).Message,
			source.CopyTriggerAnnotation)
	})
	testenv.Eventually(t, "the sync to say it is late (the tests' timeout: 3 s)", time.Minute, func() bool {
		st := e.rs("copytrigger", "rs").Status.LatestMoverStatus
		return st != nil && strings.Contains(st.Logs, "timed out waiting for the copy trigger")
	})
	testenv.Eventually(t, "a "+source.EventCopyTriggerTimeout+" event", 30*time.Second, func() bool {
		return len(e.events(e.rs("copytrigger", "rs"), source.EventCopyTriggerTimeout)) > 0
	})
	err := k.Get(ctx, client.ObjectKey{Namespace: "copytrigger", Name: "volsync-rs-src"}, &corev1.PersistentVolumeClaim{})
	assert.True(t, apierrors.IsNotFound(err), "no copy before the trigger: %v", err)

	annotate(source.CopyTriggerAnnotation, "quiesced-1")
	e.synced("copytrigger", "rs", "1")
	a := claimAnnotations()
	assert.Equal(t, "quiesced-1", a[source.LatestCopyTriggerAnnotation])
	assert.Equal(t, source.CopyStatusCompleted, a[source.LatestCopyStatusAnnotation])
	assert.NotContains(t, a, source.LatestCopyWaitingSinceAnnotation)
	assert.Equal(t, want, e.restored("copytrigger", e.image("copytrigger", "rd", "")))
}

// populate: VolSync's one-claim restore. A claim whose dataSourceRef names
// the ReplicationDestination, made before the destination has any image,
// waits (and its events say so); once the first sync's image exists the
// claim is filled from it, bound, and no prime claim is left.
func populate(e *env) {
	t, k, ctx := e.t, e.k, context.Background()
	e.app("populate", "1")
	want := e.tree("populate", "data")
	rd := e.destination("populate")
	restore := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "populate", Name: "restored"},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:     corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
			DataSourceRef: &corev1.TypedObjectReference{APIGroup: ptr.To("volsync.backube"), Kind: "ReplicationDestination", Name: "rd"}}}
	require.NoError(t, k.Create(ctx, restore))
	testenv.Eventually(t, "the claim to say it waits for the first image", time.Minute, func() bool {
		for _, note := range e.events(restore, populator.EventWaiting) {
			if strings.Contains(note, "first latestImage") {
				return true
			}
		}
		return false
	})
	require.NoError(t, k.Get(ctx, client.ObjectKeyFromObject(restore), restore))
	assert.Empty(t, restore.Spec.VolumeName, "no volume before there is an image")

	e.source("populate", rd, volsyncv1alpha1.CopyMethodClone, &volsyncv1alpha1.TriggerSpec{Manual: "1"})
	e.synced("populate", "rs", "1")
	testenv.Eventually(t, "the claim to be filled and bound", 2*time.Minute, func() bool {
		require.NoError(t, k.Get(ctx, client.ObjectKeyFromObject(restore), restore))
		return restore.Status.Phase == corev1.ClaimBound
	})
	assert.Equal(t, want, e.tree("populate", "restored"), "the claim holds the image's data")
	testenv.Eventually(t, "no prime claim left", time.Minute, func() bool {
		list := &corev1.PersistentVolumeClaimList{}
		require.NoError(t, k.List(ctx, list, client.InNamespace("populate"), client.HasLabels{populator.LabelFor}))
		return len(list.Items) == 0
	})
	testenv.Eventually(t, "the Populated event", time.Minute, func() bool { return e.occurrences(restore, populator.EventPopulated) > 0 })
	// The claim is filled once, and says so once (the prime is gone: no
	// pass that could say it again is left).
	assert.Equal(t, 1, e.occurrences(restore, populator.EventPopulated), "Populated once per claim")
}

// twoWriters: a pod that starts using a destination's claim (a user
// inspecting the replica) makes Ferry let go of it — the assignment is
// released, the volume unpublished — and the destination says so; once the
// pod is gone Ferry serves the claim again and the next sync succeeds.
func twoWriters(e *env) {
	t, k, ctx := e.t, e.k, context.Background()
	e.app("writers", "1")
	e.claim("writers", "replica", "1Gi", nil)
	rd := e.destination("writers", func(rd *volsyncv1alpha1.ReplicationDestination) {
		rd.Spec.Rsync.CopyMethod, rd.Spec.Rsync.DestinationPVC = volsyncv1alpha1.CopyMethodDirect, ptr.To("replica")
	})
	e.source("writers", rd, volsyncv1alpha1.CopyMethodDirect, &volsyncv1alpha1.TriggerSpec{Manual: "1"})
	e.synced("writers", "rs", "1")
	assignment := func() bool { return e.assigned(string(rd.UID)) }
	require.True(t, assignment(), "Ferry serves the claim")

	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "writers", Name: "inspect"},
		Spec: corev1.PodSpec{NodeName: e.c.Nodes[1].Name, AutomountServiceAccountToken: ptr.To(false),
			Containers: []corev1.Container{{Name: "shell", Image: "busybox"}},
			Volumes: []corev1.Volume{{Name: "replica", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "replica"}}}}}}
	require.NoError(t, k.Create(ctx, pod))
	testenv.Eventually(t, "Ferry to let go of the claim and say so", time.Minute, func() bool {
		msg := condition(&e.rd("writers", "rd").Status.SyncStatus, volsyncv1alpha1.ConditionSynchronizing).Message
		return !assignment() && strings.Contains(msg, "in use by pod inspect")
	})
	require.NoError(t, k.Delete(ctx, pod, client.GracePeriodSeconds(0)))
	testenv.Eventually(t, "Ferry to serve the claim again", time.Minute, assignment)
	e.trigger("writers", "rs", "2")
}

// limited: a source whose moverResources allow 1 MiB of memory fails its
// sync, and the status and the SyncFailed event say why; with the limit
// raised, the next sync succeeds.
func limited(e *env) {
	t, k, ctx := e.t, e.k, context.Background()
	e.app("limited", "1")
	memory := func(q string) func(*volsyncv1alpha1.ReplicationSource) {
		return func(rs *volsyncv1alpha1.ReplicationSource) {
			rs.Spec.Rsync.MoverResources = &corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(q)}}
		}
	}
	e.pair("limited", volsyncv1alpha1.CopyMethodDirect, &volsyncv1alpha1.TriggerSpec{Manual: "small"}, memory("1Mi"))
	var rs *volsyncv1alpha1.ReplicationSource
	testenv.Eventually(t, "the limited sync to fail", 2*time.Minute, func() bool {
		rs = e.rs("limited", "rs")
		return rs.Status.LatestMoverStatus != nil
	})
	assert.Equal(t, volsyncv1alpha1.MoverResultFailed, rs.Status.LatestMoverStatus.Result)
	assert.Contains(t, rs.Status.LatestMoverStatus.Logs, "exceeded its memory limit")
	var notes []string
	testenv.Eventually(t, "a SyncFailed event", 30*time.Second, func() bool {
		notes = e.events(rs, cycle.EventSyncFailed)
		return len(notes) > 0
	})
	assert.Contains(t, notes[0], "exceeded its memory limit")
	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		rs := e.rs("limited", "rs")
		memory("256Mi")(rs)
		return k.Update(ctx, rs)
	}))
	e.trigger("limited", "rs", "enough")
}

// controllerKilled kills the controller with SIGKILL while a sync's bytes
// are moving (the nodes' links slowed so that they still are) and starts it
// again: the sync completes, and the image the destination names holds the
// source's data as of that sync.
func controllerKilled(e *env) {
	t := e.t
	const size = 96 << 20
	e.namespace("crash", map[string]string{volsyncv1alpha1.PrivilegedMoversAnnotation: "true"})
	e.claim("crash", "data", "1Gi", nil)
	e.onVolume("crash", "data", false, func(dir string) {
		writeApp(t, dir, "1")
		harness.WriteRandom(t, filepath.Join(dir, "big"), size)
	})
	want := e.tree("crash", "data")
	for _, n := range e.c.Nodes {
		lift, err := n.Net.Limit("400mbit")
		require.NoError(t, err)
		defer func() { assert.NoError(t, lift()) }()
	}
	e.pair("crash", volsyncv1alpha1.CopyMethodClone, &volsyncv1alpha1.TriggerSpec{Manual: "go"})
	uid := string(e.rs("crash", "rs").UID)
	var cs *agentv1alpha1.SyncProgress
	testenv.Eventually(t, "the sync's bytes to be moving", time.Minute, func() bool {
		ma := e.assignment(uid)
		cs = nil
		if ma != nil {
			cs = ma.Status.CurrentSync
		}
		return cs != nil && cs.BytesDone > 0
	})
	require.Less(t, cs.BytesDone, int64(size/2), "still early in the transfer")
	e.ctrl.Kill()
	e.ctrl.Start()
	e.synced("crash", "rs", "go")
	img := e.image("crash", "rd", "")
	assert.Equal(t, want, e.restored("crash", img), "the image holds the complete sync")
}

// attached: a destination whose driver requires attach gets a
// VolumeAttachment before the agent publishes it, receives a sync, and
// deleting it detaches the volume.
func attached(e *env) {
	t, k, ctx := e.t, e.k, context.Background()
	e.namespace("attach", map[string]string{volsyncv1alpha1.PrivilegedMoversAnnotation: "true"})
	rd := &volsyncv1alpha1.ReplicationDestination{ObjectMeta: metav1.ObjectMeta{Namespace: "attach", Name: "rd"},
		Spec: volsyncv1alpha1.ReplicationDestinationSpec{Rsync: &volsyncv1alpha1.ReplicationDestinationRsyncSpec{
			ReplicationDestinationVolumeOptions: volsyncv1alpha1.ReplicationDestinationVolumeOptions{CopyMethod: volsyncv1alpha1.CopyMethodDirect,
				Capacity: ptr.To(resource.MustParse("1Gi")), AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				StorageClassName: ptr.To(cluster.AttachStorageClass)}}}}
	require.NoError(t, k.Create(ctx, rd))
	testenv.Eventually(t, "the destination's address", time.Minute, func() bool {
		rd = e.rd("attach", "rd")
		return rd.Status.Rsync != nil && rd.Status.Rsync.Address != nil && rd.Status.Rsync.SSHKeys != nil
	})
	e.claim("attach", "data", "64Mi", nil)
	e.onVolume("attach", "data", false, func(dir string) { writeApp(t, dir, "1") })
	rs := &volsyncv1alpha1.ReplicationSource{ObjectMeta: metav1.ObjectMeta{Namespace: "attach", Name: "rs"},
		Spec: volsyncv1alpha1.ReplicationSourceSpec{SourcePVC: "data", Trigger: &volsyncv1alpha1.TriggerSpec{Manual: "1"},
			Rsync: &volsyncv1alpha1.ReplicationSourceRsyncSpec{ReplicationSourceVolumeOptions: volsyncv1alpha1.ReplicationSourceVolumeOptions{CopyMethod: volsyncv1alpha1.CopyMethodDirect},
				SSHKeys: rd.Status.Rsync.SSHKeys, Address: rd.Status.Rsync.Address}}}
	require.NoError(t, k.Create(ctx, rs))
	e.synced("attach", "rs", "1")
	pvc := &corev1.PersistentVolumeClaim{}
	require.NoError(t, k.Get(ctx, client.ObjectKey{Namespace: "attach", Name: "volsync-rd-dst"}, pvc))
	held := e.leftovers(string(rd.UID), pvc.Spec.VolumeName)
	assert.Contains(t, strings.Join(held, "\n"), "attachment ferry-", "attached while the destination is active")
	require.NoError(t, k.Delete(ctx, rs))
	require.NoError(t, k.Delete(ctx, rd))
	testenv.Eventually(t, "both to be gone", time.Minute, func() bool { return gone(k, rs) && gone(k, rd) })
	assert.Empty(t, e.leftovers(string(rd.UID), pvc.Spec.VolumeName), "detached and unmounted")
}
