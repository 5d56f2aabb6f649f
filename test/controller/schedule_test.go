package controller_test

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
)

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

// BenchmarkSyncOverhead measures what a user waits beyond the data:
// trigger → the source's lastManualSync, for a small volume, Direct and
// Clone, 20 syncs each, one at a time, the destination ready for each. make
// bench prints the figures (a figure, not a test: nothing asserts a time).
func BenchmarkSyncOverhead(b *testing.B) {
	overhead(setup(b, shared, 18100))
}

// overhead runs BenchmarkSyncOverhead's syncs and logs their times.
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
