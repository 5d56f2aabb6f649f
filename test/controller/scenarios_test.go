package controller_test

import (
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	"golang.org/x/crypto/ssh"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
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

// controllerKilled kills the controller with SIGKILL while a sync is in
// progress and starts it again: the sync completes, and the image the
// destination names holds the source's data as of that sync.
func controllerKilled(e *env) {
	t := e.t
	e.namespace("crash", map[string]string{volsyncv1alpha1.PrivilegedMoversAnnotation: "true"})
	e.claim("crash", "data", "1Gi", nil)
	e.onVolume("crash", "data", false, func(dir string) {
		writeApp(t, dir, "1")
		harness.WriteRandom(t, filepath.Join(dir, "big"), 96<<20)
	})
	want := e.tree("crash", "data")
	e.pair("crash", volsyncv1alpha1.CopyMethodClone, &volsyncv1alpha1.TriggerSpec{Manual: "go"})
	var rs *volsyncv1alpha1.ReplicationSource
	testenv.Eventually(t, "the sync to be in progress", time.Minute, func() bool {
		rs = e.rs("crash", "rs")
		return condition(&rs.Status.SyncStatus, volsyncv1alpha1.ConditionSynchronizing).Reason == volsyncv1alpha1.SynchronizingReasonSync
	})
	e.ctrl.Kill()
	e.ctrl.Start()
	e.synced("crash", "rs", "go")
	img := e.image("crash", "rd", "")
	assert.Equal(t, want, e.restored("crash", img), "the image holds the complete sync")
}

// direct: a Direct source (the live claim) into a Direct destination (a
// claim the user made), keys the user made, a LoadBalancer Service whose
// address the test hands out as a cloud's controller would; the
// destination's namespace is not annotated, so owners are not kept and the
// condition says so. Pausing the destination releases its volume.
func direct(e *env) {
	t, k, ctx := e.t, e.k, context.Background()
	e.namespace("direct-src", map[string]string{volsyncv1alpha1.PrivilegedMoversAnnotation: "true"})
	e.namespace("direct-dst", nil)
	dstKeys, srcKeys, err := sshkeys.Secrets()
	require.NoError(t, err)
	require.NoError(t, k.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "direct-dst", Name: "keys"}, Data: dstKeys}))
	require.NoError(t, k.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "direct-src", Name: "keys"}, Data: srcKeys}))
	replicaPV := e.claim("direct-dst", "replica", "1Gi", nil)
	rd := &volsyncv1alpha1.ReplicationDestination{ObjectMeta: metav1.ObjectMeta{Namespace: "direct-dst", Name: "rd"},
		Spec: volsyncv1alpha1.ReplicationDestinationSpec{Rsync: &volsyncv1alpha1.ReplicationDestinationRsyncSpec{
			ReplicationDestinationVolumeOptions: volsyncv1alpha1.ReplicationDestinationVolumeOptions{CopyMethod: volsyncv1alpha1.CopyMethodDirect,
				DestinationPVC: ptr.To("replica")},
			SSHKeys: ptr.To("keys"), ServiceType: ptr.To(corev1.ServiceTypeLoadBalancer), Port: ptr.To(int32(2022)),
			MoverConfig: volsyncv1alpha1.MoverConfig{MoverSecurityContext: &corev1.PodSecurityContext{
				RunAsUser: ptr.To(int64(1000)), FSGroup: ptr.To(int64(2000))}}}}}
	require.NoError(t, k.Create(ctx, rd))

	// Play the cloud's load-balancer controller.
	svc := &corev1.Service{}
	testenv.Eventually(t, "the LoadBalancer Service", time.Minute, func() bool {
		return k.Get(ctx, client.ObjectKey{Namespace: "direct-dst", Name: "volsync-rsync-dst-rd"}, svc) == nil
	})
	assert.Equal(t, corev1.ServiceTypeLoadBalancer, svc.Spec.Type)
	testenv.Eventually(t, "the destination's status", time.Minute, func() bool {
		rd = e.rd("direct-dst", "rd")
		return rd.Status.Rsync != nil && rd.Status.Rsync.Port != nil
	})
	assert.Nil(t, rd.Status.Rsync.Address, "no address before the load balancer has one")
	e.loadBalance(svc, "10.99.0.10")
	testenv.Eventually(t, "the load balancer's address in status", time.Minute, func() bool {
		rd = e.rd("direct-dst", "rd")
		return rd.Status.Rsync.Address != nil
	})
	assert.Equal(t, "10.99.0.10", *rd.Status.Rsync.Address)
	assert.Equal(t, int32(2022), *rd.Status.Rsync.Port)
	assert.Nil(t, rd.Status.Rsync.SSHKeys, "user-given keys: nothing generated")
	assert.Contains(t, condition(&rd.Status.SyncStatus, volsyncv1alpha1.ConditionReconciled).Message, "transfers run unprivileged")
	var ma agentv1alpha1.MountAssignment
	require.NoError(t, k.Get(ctx, client.ObjectKey{Namespace: harness.Namespace, Name: "rd-" + string(rd.UID)}, &ma))
	assert.Equal(t, &agentv1alpha1.RunAs{UID: 1000, GID: 2000}, ma.Spec.Destination.RunAs, "moverSecurityContext reaches the agent")

	e.claim("direct-src", "app", "1Gi", nil)
	e.onVolume("direct-src", "app", false, func(dir string) {
		writeApp(t, dir, "1")
		require.NoError(t, os.WriteFile(filepath.Join(dir, "tool"), []byte("#!/bin/sh\n"), 0o755))
		require.NoError(t, os.Chmod(filepath.Join(dir, "tool"), 0o4755))
	})
	rs := &volsyncv1alpha1.ReplicationSource{ObjectMeta: metav1.ObjectMeta{Namespace: "direct-src", Name: "rs"},
		Spec: volsyncv1alpha1.ReplicationSourceSpec{SourcePVC: "app", Trigger: &volsyncv1alpha1.TriggerSpec{Manual: "1"},
			Rsync: &volsyncv1alpha1.ReplicationSourceRsyncSpec{ReplicationSourceVolumeOptions: volsyncv1alpha1.ReplicationSourceVolumeOptions{CopyMethod: volsyncv1alpha1.CopyMethodDirect},
				SSHKeys: ptr.To("keys"), Address: rd.Status.Rsync.Address, Port: ptr.To(int32(2022))}}}
	require.NoError(t, k.Create(ctx, rs))
	e.synced("direct-src", "rs", "1")
	testenv.Eventually(t, "the destination to name its volume as the image", time.Minute, func() bool {
		rd = e.rd("direct-dst", "rd")
		return rd.Status.LatestImage != nil && rd.Status.LastSyncTime != nil
	})
	assert.Equal(t, &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: "replica"}, rd.Status.LatestImage)

	// A paused source starts no sync for a new trigger, and says so.
	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		rs = e.rs("direct-src", "rs")
		rs.Spec.Paused, rs.Spec.Trigger.Manual = true, "2"
		return k.Update(ctx, rs)
	}))
	testenv.Eventually(t, "the paused source to say so", time.Minute, func() bool {
		rs = e.rs("direct-src", "rs")
		return strings.Contains(condition(&rs.Status.SyncStatus, volsyncv1alpha1.ConditionSynchronizing).Message, "paused")
	})
	assert.Equal(t, "1", rs.Status.LastManualSync, "no sync while paused")

	// Paused: the volume is released, and the user can use it.
	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		rd = e.rd("direct-dst", "rd")
		rd.Spec.Paused = true
		return k.Update(ctx, rd)
	}))
	testenv.Eventually(t, "the paused destination's volume to be released", time.Minute, func() bool {
		return len(e.leftovers(string(rd.UID), replicaPV.Name)) == 1 // the key copy stays
	})
	testenv.Eventually(t, "the destination to say it is paused", time.Minute, func() bool {
		return strings.Contains(condition(&e.rd("direct-dst", "rd").Status.SyncStatus, volsyncv1alpha1.ConditionSynchronizing).Message, "paused")
	})
	src := e.tree("direct-src", "app")
	var got map[string]string
	var owners []uint32
	e.onVolume("direct-dst", "replica", true, func(dir string) {
		got = harness.Tree(t, dir)
		for _, f := range []string{"db/config", "db/logs"} {
			fi, err := os.Lstat(filepath.Join(dir, f))
			require.NoError(t, err)
			owners = append(owners, fi.Sys().(*syscall.Stat_t).Uid)
		}
	})
	assert.Equal(t, len(src), len(got), "every entry arrived")
	assert.Equal(t, []uint32{1000, 1000}, owners, "unprivileged: files belong to moverSecurityContext's runAsUser, not the sender's owners")

	require.NoError(t, k.Delete(ctx, rs))
	require.NoError(t, k.Delete(ctx, rd))
	testenv.Eventually(t, "both to be gone", time.Minute, func() bool { return gone(k, rs) && gone(k, rd) })
	assert.Empty(t, e.leftovers(string(rd.UID), replicaPV.Name))
	assert.Empty(t, e.leftovers(string(rs.UID), ""))
	require.NoError(t, k.Get(ctx, client.ObjectKey{Namespace: "direct-dst", Name: "replica"}, &corev1.PersistentVolumeClaim{}),
		"the user's destination claim stays")
}

// badInput: every input a user can get wrong ends in a Reconciled=False
// condition and an event whose message names what to fix.
func badInput(e *env) {
	t, k, ctx := e.t, e.k, context.Background()
	e.namespace("bad", nil)
	dstKeys, _, err := sshkeys.Secrets()
	require.NoError(t, err)
	require.NoError(t, k.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "bad", Name: "dst-keys"}, Data: dstKeys}))
	e.claim("bad", "data", "64Mi", nil)
	source := func(name string, mutate func(*volsyncv1alpha1.ReplicationSourceSpec)) client.Object {
		rs := &volsyncv1alpha1.ReplicationSource{ObjectMeta: metav1.ObjectMeta{Namespace: "bad", Name: name},
			Spec: volsyncv1alpha1.ReplicationSourceSpec{SourcePVC: "data", Trigger: &volsyncv1alpha1.TriggerSpec{Manual: "1"},
				Rsync: &volsyncv1alpha1.ReplicationSourceRsyncSpec{ReplicationSourceVolumeOptions: volsyncv1alpha1.ReplicationSourceVolumeOptions{CopyMethod: volsyncv1alpha1.CopyMethodClone},
					Address: ptr.To("10.96.0.200")}}}
		mutate(&rs.Spec)
		require.NoError(t, k.Create(ctx, rs))
		return rs
	}
	destination := func(name string, mutate func(*volsyncv1alpha1.ReplicationDestinationSpec)) client.Object {
		rd := &volsyncv1alpha1.ReplicationDestination{ObjectMeta: metav1.ObjectMeta{Namespace: "bad", Name: name},
			Spec: volsyncv1alpha1.ReplicationDestinationSpec{Rsync: &volsyncv1alpha1.ReplicationDestinationRsyncSpec{
				ReplicationDestinationVolumeOptions: volsyncv1alpha1.ReplicationDestinationVolumeOptions{CopyMethod: volsyncv1alpha1.CopyMethodSnapshot,
					Capacity: ptr.To(resource.MustParse("1Gi")), AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}}}}}
		mutate(&rd.Spec)
		require.NoError(t, k.Create(ctx, rd))
		return rd
	}
	annotate := func(obj client.Object, key, value string) client.Object {
		patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, key, value)
		require.NoError(t, k.Patch(ctx, obj, client.RawPatch(types.MergePatchType, []byte(patch))))
		return obj
	}
	cases := []struct {
		obj  client.Object
		want string
	}{
		{source("no-pvc", func(s *volsyncv1alpha1.ReplicationSourceSpec) { s.SourcePVC = "nope" }),
			`spec.sourcePVC "nope" does not exist in namespace bad`},
		{source("no-secret", func(s *volsyncv1alpha1.ReplicationSourceSpec) { s.Rsync.SSHKeys = ptr.To("missing") }),
			"Secret bad/missing named in spec.rsync.sshKeys does not exist"},
		{source("wrong-secret", func(s *volsyncv1alpha1.ReplicationSourceSpec) { s.Rsync.SSHKeys = ptr.To("dst-keys") }),
			"missing or empty field(s) source"},
		{source("no-address", func(s *volsyncv1alpha1.ReplicationSourceSpec) { s.Rsync.Address = nil }),
			"spec.rsync.address is required"},
		{annotate(source("bad-compression", func(*volsyncv1alpha1.ReplicationSourceSpec) {}), volsyncv1alpha1.CompressionAnnotation, "gzip"),
			`annotation ferrysync.io/compression: invalid compression "gzip": want zstd, lz4, zlib or none`},
		{source("rclone", func(s *volsyncv1alpha1.ReplicationSourceSpec) {
			s.Rsync, s.Rclone = nil, &apiextensionsv1.JSON{Raw: []byte(`{}`)}
		}), "Ferry serves VolSync's rsync mover only"},
		{destination("no-class", func(s *volsyncv1alpha1.ReplicationDestinationSpec) { s.Rsync.StorageClassName = ptr.To("gold") }),
			`storage class "gold" (spec.rsync.storageClassName) does not exist`},
		{destination("no-dest-pvc", func(s *volsyncv1alpha1.ReplicationDestinationSpec) { s.Rsync.DestinationPVC = ptr.To("absent") }),
			`spec.rsync.destinationPVC "absent" does not exist`},
		{destination("root-group", func(s *volsyncv1alpha1.ReplicationDestinationSpec) {
			s.Rsync.MoverSecurityContext = &corev1.PodSecurityContext{RunAsUser: ptr.To(int64(4321)), RunAsGroup: ptr.To(int64(0))}
		}), "moverSecurityContext runs the mover as uid 4321, gid 0: user or group 0 needs the namespace's volsync.backube/privileged-movers"},
	}
	for _, tc := range cases {
		var c *metav1.Condition
		testenv.Eventually(t, tc.obj.GetName()+"'s condition", time.Minute, func() bool {
			require.NoError(t, k.Get(ctx, client.ObjectKeyFromObject(tc.obj), tc.obj))
			c = meta.FindStatusCondition(conditionsOf(tc.obj), volsyncv1alpha1.ConditionReconciled)
			return c != nil && c.Status == metav1.ConditionFalse
		})
		assert.Contains(t, c.Message, tc.want, tc.obj.GetName())
		assert.Equal(t, volsyncv1alpha1.ReconciledReasonError, c.Reason)
		testenv.Eventually(t, tc.obj.GetName()+"'s event", time.Minute, func() bool {
			for _, note := range e.events(tc.obj, cycle.EventInvalid) {
				if strings.Contains(note, tc.want) {
					return true
				}
			}
			return false
		})
	}

	// A destination nobody listens at: the agent's tries fail, the sync is
	// reported failed with the error, and is retried later.
	source("unreachable", func(s *volsyncv1alpha1.ReplicationSourceSpec) {
		s.Rsync.Address, s.Rsync.Port = ptr.To(e.c.Nodes[0].Net.IP), ptr.To(int32(1))
	})
	var got *volsyncv1alpha1.ReplicationSource
	var sync metav1.Condition
	testenv.Eventually(t, "the unreachable sync to fail and wait to be retried", 2*time.Minute, func() bool {
		got = e.rs("bad", "unreachable")
		sync = condition(&got.Status.SyncStatus, volsyncv1alpha1.ConditionSynchronizing)
		return sync.Reason == volsyncv1alpha1.SynchronizingReasonError
	})
	assert.Equal(t, volsyncv1alpha1.MoverResultFailed, got.Status.LatestMoverStatus.Result)
	assert.Contains(t, got.Status.LatestMoverStatus.Logs, "connection refused")
	assert.Contains(t, sync.Message, "the last sync failed")
	assert.Contains(t, sync.Message, "trying again at")
	assert.Empty(t, got.Status.LastManualSync, "a failed sync does not echo the trigger")
	testenv.Eventually(t, "the SyncFailed event", time.Minute, func() bool { return len(e.events(got, cycle.EventSyncFailed)) > 0 })
}

func conditionsOf(obj client.Object) []metav1.Condition {
	switch o := obj.(type) {
	case *volsyncv1alpha1.ReplicationSource:
		return o.Status.Conditions
	case *volsyncv1alpha1.ReplicationDestination:
		return o.Status.Conditions
	}
	return nil
}

// schedule: a Snapshot source on a one-minute schedule keeps the replica
// current over three intervals: each scheduled sync carries the change
// made after the one before, and no interval is missed.
func schedule(e *env) {
	t, ctx := e.t, context.Background()
	e.app("sched", "0")
	e.pair("sched", volsyncv1alpha1.CopyMethodSnapshot, &volsyncv1alpha1.TriggerSpec{Schedule: ptr.To("*/1 * * * *")})
	rs := e.rs("sched", "rs")
	testenv.Eventually(t, "nextSyncTime", time.Minute, func() bool {
		rs = e.rs("sched", "rs")
		return rs.Status.NextSyncTime != nil
	})
	assert.Zero(t, rs.Status.NextSyncTime.Second(), "on the minute")
	var last time.Time
	img := ""
	missedSeries := map[string]string{"obj_namespace": "sched", "obj_name": "rs", "role": "source"}
	var missedBefore float64
	for verified, round := 0, 1; verified < 3; round++ {
		require.LessOrEqual(t, round, 6, "three intervals verified within six")
		testenv.Eventually(t, "the next scheduled sync", 2*time.Minute, func() bool {
			rs = e.rs("sched", "rs")
			return rs.Status.LastSyncTime != nil && rs.Status.LastSyncTime.After(last)
		})
		last = rs.Status.LastSyncTime.Time
		require.Equal(t, volsyncv1alpha1.MoverResultSuccessful, rs.Status.LatestMoverStatus.Result, rs.Status.LatestMoverStatus.Logs)
		if round == 1 {
			// The first sync starts at once and may wait for the
			// destination across a minute: count from its end.
			missedBefore = e.ctrl.Metric("volsync_missed_intervals_total", missedSeries)
		}
		img = e.image("sched", "rd", img)
		if round > 1 {
			assert.Equal(t, e.tree("sched", "data"), e.restored("sched", img), "sync %d carries the change before it", round)
			verified++
		}
		// Change the data only well before the next scheduled snapshot.
		if time.Until(rs.Status.NextSyncTime.Time) < 15*time.Second {
			continue
		}
		e.onVolume("sched", "data", false, func(dir string) { writeApp(t, dir, time.Now().Format("150405")) })
	}
	missed := e.ctrl.Metric("volsync_missed_intervals_total", missedSeries) - missedBefore
	assert.Equal(t, 0.0, missed, "no interval missed once the schedule runs")
	assert.Equal(t, 0.0, e.ctrl.Metric("volsync_volume_out_of_sync", map[string]string{"obj_namespace": "sched", "obj_name": "rs", "role": "source"}))
	assert.Greater(t, e.ctrl.Metric("volsync_sync_duration_seconds_count", map[string]string{"obj_namespace": "sched", "obj_name": "rs"}), 2.0)
	require.NoError(t, e.k.Delete(ctx, rs))
}

// overhead measures what a user waits beyond the data: trigger → the
// source's lastManualSync, for a small volume, Direct and Clone, 20 syncs
// each, one at a time, the destination ready for each.
func overhead(e *env) {
	t, k, ctx := e.t, e.k, context.Background()
	e.namespace("overhead", map[string]string{volsyncv1alpha1.PrivilegedMoversAnnotation: "true"})
	e.claim("overhead", "data", "64Mi", nil)
	e.onVolume("overhead", "data", false, func(dir string) { writeApp(t, dir, "0") })
	e.pair("overhead", volsyncv1alpha1.CopyMethodDirect, &volsyncv1alpha1.TriggerSpec{Manual: "0"})
	e.synced("overhead", "rs", "0")
	clone := &volsyncv1alpha1.ReplicationSource{ObjectMeta: metav1.ObjectMeta{Namespace: "overhead", Name: "clone"},
		Spec: *e.rs("overhead", "rs").Spec.DeepCopy()}
	clone.Spec.Rsync.CopyMethod = volsyncv1alpha1.CopyMethodClone
	require.NoError(t, k.Create(ctx, clone))
	e.synced("overhead", "clone", "0")
	for _, name := range []string{"rs", "clone"} {
		var took []time.Duration
		for i := 1; i <= 20; i++ {
			testenv.Eventually(t, "the destination to wait for a source", time.Minute, func() bool {
				c := condition(&e.rd("overhead", "rd").Status.SyncStatus, volsyncv1alpha1.ConditionSynchronizing)
				return c.Reason == volsyncv1alpha1.SynchronizingReasonSync && c.Message == "waiting for the source to connect"
			})
			start := time.Now()
			e.trigger("overhead", name, strconv.Itoa(i))
			took = append(took, time.Since(start))
		}
		sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
		t.Logf("per-sync overhead, %s source, small volume (manual trigger → lastManualSync), 20 syncs: median %v, min %v, max %v",
			e.rs("overhead", name).Spec.Rsync.CopyMethod, took[10].Round(time.Millisecond), took[0].Round(time.Millisecond), took[19].Round(time.Millisecond))
	}
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

// firstSyncAndManual: what VolSync's e2e suite expects of triggers. A source
// on a yearly schedule syncs at once after it is created (VolSync's Initial
// state), not next January; a manual trigger set beside the schedule starts
// a sync (the manual trigger wins), and the CR then waits for the manual
// trigger.
func firstSyncAndManual(e *env) {
	t := e.t
	e.app("yearly", "1")
	want := e.tree("yearly", "data")
	e.pair("yearly", volsyncv1alpha1.CopyMethodSnapshot, &volsyncv1alpha1.TriggerSpec{Schedule: ptr.To("0 0 1 1 *")})
	var rs *volsyncv1alpha1.ReplicationSource
	testenv.Eventually(t, "the first sync, at once", 3*time.Minute, func() bool {
		rs = e.rs("yearly", "rs")
		return rs.Status.LastSyncTime != nil
	})
	require.Equal(t, volsyncv1alpha1.MoverResultSuccessful, rs.Status.LatestMoverStatus.Result, rs.Status.LatestMoverStatus.Logs)
	testenv.Eventually(t, "the next scheduled time", time.Minute, func() bool {
		rs = e.rs("yearly", "rs")
		return rs.Status.NextSyncTime != nil
	})
	assert.Equal(t, time.January, rs.Status.NextSyncTime.UTC().Month())
	assert.Equal(t, 1, rs.Status.NextSyncTime.UTC().Day())
	img := e.image("yearly", "rd", "")
	assert.Equal(t, want, e.restored("yearly", img), "the first image holds the source")

	e.onVolume("yearly", "data", false, func(dir string) { writeApp(t, dir, "2") })
	want = e.tree("yearly", "data")
	rs = e.trigger("yearly", "rs", "kick")
	assert.Equal(t, volsyncv1alpha1.SynchronizingReasonManual, condition(&rs.Status.SyncStatus, volsyncv1alpha1.ConditionSynchronizing).Reason)
	assert.Nil(t, rs.Status.NextSyncTime, "the manual trigger rules; no scheduled time")
	img = e.image("yearly", "rd", img)
	assert.Equal(t, want, e.restored("yearly", img), "the manual sync beside the schedule carried the change")
}

// longNames: a destination and a source whose names are longer than a
// label value (70 characters) and close to the API's limit (240) sync and
// restore like any other: every name and label Ferry derives from them is
// shortened with a hash, as VolSync does. The 70-character pair restores
// from latestImage's snapshot, the 240-character one into a claim filled
// by the populator.
func longNames(e *env) {
	t, k, ctx := e.t, e.k, context.Background()
	e.app("long", "1")
	want := e.tree("long", "data")
	for _, n := range []int{70, 240} {
		name := fmt.Sprintf("n%d-", n) + strings.Repeat("x", n-len(fmt.Sprintf("n%d-", n)))
		require.Len(t, name, n)
		rd := e.namedPair("long", name, "data", volsyncv1alpha1.CopyMethodSnapshot, "1")
		assert.LessOrEqual(t, len(*rd.Status.Rsync.SSHKeys), 253)
		rs := e.synced("long", name, "1")
		assert.Equal(t, metav1.ConditionTrue, condition(&rs.Status.SyncStatus, volsyncv1alpha1.ConditionReconciled).Status)
		img := e.image("long", name, "")
		if n == 70 {
			assert.Equal(t, want, e.restored("long", img), "the %d-character destination's image holds the source", n)
			continue
		}
		restore := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "long", Name: "restored"},
			Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources:     corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
				DataSourceRef: &corev1.TypedObjectReference{APIGroup: ptr.To("volsync.backube"), Kind: "ReplicationDestination", Name: name}}}
		require.NoError(t, k.Create(ctx, restore))
		testenv.Eventually(t, "the claim filled from the 240-character destination", 2*time.Minute, func() bool {
			require.NoError(t, k.Get(ctx, client.ObjectKeyFromObject(restore), restore))
			return restore.Status.Phase == corev1.ClaimBound
		})
		assert.Equal(t, want, e.tree("long", "restored"), "the claim holds the image's data")
	}
}

// namedPair makes, in namespace ns, a Snapshot destination and a source of
// claim by method into it, both named name, the source with manual trigger
// manual; it returns the destination once it has an address and keys.
func (e *env) namedPair(ns, name, claim string, method volsyncv1alpha1.CopyMethodType, manual string) *volsyncv1alpha1.ReplicationDestination {
	t, ctx := e.t, context.Background()
	t.Helper()
	rd := &volsyncv1alpha1.ReplicationDestination{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: volsyncv1alpha1.ReplicationDestinationSpec{Rsync: &volsyncv1alpha1.ReplicationDestinationRsyncSpec{
			ReplicationDestinationVolumeOptions: volsyncv1alpha1.ReplicationDestinationVolumeOptions{CopyMethod: volsyncv1alpha1.CopyMethodSnapshot,
				Capacity: ptr.To(resource.MustParse("1Gi")), AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}}}}}
	require.NoError(t, e.k.Create(ctx, rd))
	testenv.Eventually(t, fmt.Sprintf("destination %s/%s's address and keys", ns, name), time.Minute, func() bool {
		rd = e.rd(ns, name)
		return rd.Status.Rsync != nil && rd.Status.Rsync.Address != nil && rd.Status.Rsync.SSHKeys != nil
	})
	rs := &volsyncv1alpha1.ReplicationSource{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: volsyncv1alpha1.ReplicationSourceSpec{SourcePVC: claim, Trigger: &volsyncv1alpha1.TriggerSpec{Manual: manual},
			Rsync: &volsyncv1alpha1.ReplicationSourceRsyncSpec{ReplicationSourceVolumeOptions: volsyncv1alpha1.ReplicationSourceVolumeOptions{CopyMethod: method},
				SSHKeys: rd.Status.Rsync.SSHKeys, Address: rd.Status.Rsync.Address}}}
	require.NoError(t, e.k.Create(ctx, rs))
	return rd
}
