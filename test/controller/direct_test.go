package controller_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/transfer/sshkeys"
	"github.com/ferrysync/ferry/test/harness"
)

// direct: a Direct source (the live claim) into a Direct destination (a
// claim the user made), keys the user made, a LoadBalancer Service whose
// address the test hands out as a cloud's controller would; the
// destination's namespace is not annotated, so owners are not kept and the
// condition says so. Pausing the destination releases its volume.
func direct(e *env) {
	t, k, ctx := e.t, e.k, context.Background()
	rd, replicaPV := directDestination(e)
	rs := directSource(e, rd)
	directPaused(e, rs, rd, replicaPV)
	require.NoError(t, k.Delete(ctx, rs))
	require.NoError(t, k.Delete(ctx, rd))
	testenv.Eventually(t, "both to be gone", time.Minute, func() bool { return gone(k, rs) && gone(k, rd) })
	assert.Empty(t, e.leftovers(string(rd.UID), replicaPV.Name))
	assert.Empty(t, e.leftovers(string(rs.UID), ""))
	require.NoError(t, k.Get(ctx, client.ObjectKey{Namespace: "direct-dst", Name: "replica"}, &corev1.PersistentVolumeClaim{}),
		"the user's destination claim stays")
}

// directDestination makes the user's keys and claim and a Direct
// destination of them behind a LoadBalancer, plays the cloud's
// load-balancer controller and checks the destination's status and
// assignment.
func directDestination(e *env) (*volsyncv1alpha1.ReplicationDestination, *corev1.PersistentVolume) {
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
	return rd, replicaPV
}

// directSource makes the Direct source of a live claim with a setuid
// file, syncs it once and checks that the destination names its claim as
// the image.
func directSource(e *env, rd *volsyncv1alpha1.ReplicationDestination) *volsyncv1alpha1.ReplicationSource {
	t, k, ctx := e.t, e.k, context.Background()
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
	return rs
}

// directPaused pauses the source (no sync for a new trigger) and the
// destination (its volume released for the user, who finds the files the
// ordinary user's).
func directPaused(e *env, rs *volsyncv1alpha1.ReplicationSource, rd *volsyncv1alpha1.ReplicationDestination, replicaPV *corev1.PersistentVolume) {
	t, k, ctx := e.t, e.k, context.Background()
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
}
