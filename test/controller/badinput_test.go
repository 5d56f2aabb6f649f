package controller_test

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/cycle"
	"github.com/ferrysync/ferry/pkg/transfer/sshkeys"
)

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
		{annotate(source("bad-bandwidth", func(*volsyncv1alpha1.ReplicationSourceSpec) {}), volsyncv1alpha1.BandwidthLimitAnnotation, "fast"),
			`annotation ferrysync.io/bandwidth-limit: "fast" is not a rate: give bytes per second as a positive quantity, for example 10Mi`},
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
