package cli

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/transfer/sshkeys"
)

func claim() *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "db"},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("2Gi")}}},
		Status: corev1.PersistentVolumeClaimStatus{Capacity: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("3Gi")}}}
}

func defaults() pairOptions {
	return pairOptions{copyMethod: "Snapshot", destCopyMethod: "Snapshot", serviceType: "ClusterIP"}
}

func TestPlanPair(t *testing.T) {
	cases := map[string]struct {
		opts  func(*pairOptions)
		check func(*testing.T, pairing)
		err   string
	}{
		"defaults: the claim's name, size as bound, one sync at pairing": {check: func(t *testing.T, p pairing) {
			assert.Equal(t, "db", p.destination.Name)
			assert.Equal(t, "dr", p.destination.Namespace)
			assert.Equal(t, "3Gi", p.destination.Spec.Rsync.Capacity.String(), "the bound size, not the request")
			assert.Equal(t, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, p.destination.Spec.Rsync.AccessModes)
			assert.Equal(t, "db-ferry-keys", *p.destination.Spec.Rsync.SSHKeys)
			assert.Equal(t, "db-ferry-keys", *p.source.Spec.Rsync.SSHKeys)
			assert.Equal(t, "app", p.source.Namespace)
			assert.Equal(t, "db", p.source.Spec.SourcePVC)
			assert.Equal(t, initialTrigger, p.source.Spec.Trigger.Manual)
			assert.Nil(t, p.source.Spec.Trigger.Schedule)
			assert.Nil(t, p.destination.Spec.Rsync.StorageClassName)
		}},
		"a schedule, a name, a class and a load balancer": {
			opts: func(o *pairOptions) {
				o.schedule, o.name, o.storageClass, o.serviceType, o.copyMethod = "*/5 * * * *", "nightly", "fast", "LoadBalancer", "Clone"
			},
			check: func(t *testing.T, p pairing) {
				assert.Equal(t, "nightly", p.source.Name)
				assert.Equal(t, "*/5 * * * *", *p.source.Spec.Trigger.Schedule)
				assert.Empty(t, p.source.Spec.Trigger.Manual)
				assert.Equal(t, "fast", *p.destination.Spec.Rsync.StorageClassName)
				assert.Equal(t, corev1.ServiceTypeLoadBalancer, *p.destination.Spec.Rsync.ServiceType)
				assert.Equal(t, volsyncv1alpha1.CopyMethodClone, p.source.Spec.Rsync.CopyMethod)
			}},
		"an unknown copy method":    {opts: func(o *pairOptions) { o.copyMethod = "Copy" }, err: `--copy-method "Copy": use Snapshot, Clone or Direct`},
		"a destination can't clone": {opts: func(o *pairOptions) { o.destCopyMethod = "Clone" }, err: `--dest-copy-method "Clone": use Snapshot or Direct`},
		"an unknown Service type":   {opts: func(o *pairOptions) { o.serviceType = "NodePort" }, err: `--service-type "NodePort": use ClusterIP or LoadBalancer`},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			o := defaults()
			if tc.opts != nil {
				tc.opts(&o)
			}
			p, err := planPair(claim(), "dr", o)
			if tc.err != "" {
				require.EqualError(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			tc.check(t, p)
		})
	}
}

func TestPlanPairTakesTheAddressFromTheDestination(t *testing.T) {
	p, err := planPair(claim(), "dr", defaults())
	require.NoError(t, err)
	assert.False(t, p.withAddress(&volsyncv1alpha1.ReplicationDestinationStatus{}), "no address yet")
	assert.False(t, p.withAddress(&volsyncv1alpha1.ReplicationDestinationStatus{Rsync: &volsyncv1alpha1.ReplicationDestinationRsyncStatus{Address: ptr.To("")}}))
	assert.True(t, p.withAddress(&volsyncv1alpha1.ReplicationDestinationStatus{Rsync: &volsyncv1alpha1.ReplicationDestinationRsyncStatus{
		Address: ptr.To("10.96.0.7"), Port: ptr.To(int32(2022))}}))
	assert.Equal(t, "10.96.0.7", *p.source.Spec.Rsync.Address)
	assert.Equal(t, int32(2022), *p.source.Spec.Rsync.Port)
}

func TestMatchedKeys(t *testing.T) {
	dst, src, err := sshkeys.Secrets()
	require.NoError(t, err)
	dst2, src2, err := sshkeys.Secrets()
	require.NoError(t, err)
	assert.True(t, matched(src, dst))
	assert.False(t, matched(src, nil), "one side missing")
	assert.False(t, matched(src2, dst), "halves of two pairs")
	assert.False(t, matched(src, dst2))
	broken := map[string][]byte{sshkeys.SourcePublic: src[sshkeys.SourcePublic], sshkeys.DestinationPublic: src[sshkeys.DestinationPublic]}
	assert.False(t, matched(broken, dst), "the source's private key missing")
}

func TestObserveSync(t *testing.T) {
	cond := func(typ, status, reason, msg string, gen int64) metav1.Condition {
		return metav1.Condition{Type: typ, Status: metav1.ConditionStatus(status), Reason: reason, Message: msg, ObservedGeneration: gen}
	}
	cases := map[string]struct {
		status volsyncv1alpha1.SyncStatus
		done   bool
		failed string
		line   string
	}{
		"not seen yet: an older failure does not count": {
			status: volsyncv1alpha1.SyncStatus{Conditions: []metav1.Condition{cond("Synchronizing", "False", "Error", "old", 4)}},
			line:   "3s  old"},
		"running: bytes, files, rate, try, node": {
			status: volsyncv1alpha1.SyncStatus{Progress: &volsyncv1alpha1.TransferProgress{Node: "node-a", BytesDone: 3 << 20, FilesDone: 12, BytesPerSecond: 1 << 20, Attempt: 2}},
			line:   "3s  3.0 MiB, 12 files, 1.0 MiB/s  try 2 on node-a"},
		"completed": {
			status: volsyncv1alpha1.SyncStatus{LastManualSync: "v", LastSyncDuration: &metav1.Duration{Duration: 1500 * time.Millisecond},
				LatestMoverStatus: &volsyncv1alpha1.MoverStatus{Logs: "sent 10 bytes  received 20 bytes  30.00 bytes/sec\nmore"}},
			done: true, line: "synced in 1.5s: sent 10 bytes  received 20 bytes  30.00 bytes/sec"},
		"failed after the trigger": {
			status: volsyncv1alpha1.SyncStatus{Conditions: []metav1.Condition{cond("Synchronizing", "False", "Error", "connection refused", 5)}},
			done:   true, failed: "the sync failed: connection refused", line: "failed: connection refused"},
		"invalid spec": {
			status: volsyncv1alpha1.SyncStatus{Conditions: []metav1.Condition{cond("Reconciled", "False", "Error", "Secret keys is missing", 5)}},
			done:   true, failed: "the ReplicationSource is not valid: Secret keys is missing", line: "failed: Secret keys is missing"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			rs := &volsyncv1alpha1.ReplicationSource{Status: volsyncv1alpha1.ReplicationSourceStatus{SyncStatus: tc.status}}
			got := observeSync(rs, "v", 5, 3*time.Second)
			assert.Equal(t, syncOutcome{done: tc.done, failed: tc.failed, line: tc.line}, got)
		})
	}
}

func TestStatusRow(t *testing.T) {
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *metav1.Time { return ptr.To(metav1.NewTime(now.Add(d))) }
	st := &volsyncv1alpha1.SyncStatus{LastSyncTime: at(-30 * time.Second), LastSyncDuration: &metav1.Duration{Duration: 10 * time.Second},
		NextSyncTime:      at(90 * time.Second),
		LatestMoverStatus: &volsyncv1alpha1.MoverStatus{Logs: "sent 2,048 bytes  received 1,048,576 bytes  4,096.00 bytes/sec"},
		Conditions:        []metav1.Condition{{Type: "Synchronizing", Status: "False", Reason: "WaitingForSchedule"}}}
	assert.Equal(t, []string{"source", "app", "db", "30s ago", "10s", "in 90s", "2.0 KiB", "4.0 KiB/s", "WaitingForSchedule", "40s"},
		statusRow("source", "app", "db", st, now), "out of sync since the last sync started")
	assert.Equal(t, "1.0 MiB", statusRow("destination", "dr", "db", st, now)[6], "a destination moved what it received")
	st.Progress = &volsyncv1alpha1.TransferProgress{BytesDone: 5 << 20, BytesPerSecond: 1 << 20}
	st.Conditions = []metav1.Condition{{Type: "Reconciled", Status: "False", Message: "no Secret"}}
	row := statusRow("source", "app", "db", st, now)
	assert.Equal(t, []string{"5.0 MiB", "1.0 MiB/s", "Invalid: no Secret"}, row[6:9], "a running sync's progress; an invalid spec")
	assert.Equal(t, []string{"source", "app", "new", "never", "-", "-", "-", "-", "-", "-"},
		statusRow("source", "app", "new", &volsyncv1alpha1.SyncStatus{}, now))
}

func TestRestoreClaim(t *testing.T) {
	rd := &volsyncv1alpha1.ReplicationDestination{ObjectMeta: metav1.ObjectMeta{Namespace: "dr", Name: "db"},
		Spec: volsyncv1alpha1.ReplicationDestinationSpec{Rsync: &volsyncv1alpha1.ReplicationDestinationRsyncSpec{
			ReplicationDestinationVolumeOptions: volsyncv1alpha1.ReplicationDestinationVolumeOptions{Capacity: ptr.To(resource.MustParse("3Gi")),
				StorageClassName: ptr.To("standard")}}}}
	_, err := restoreClaim(rd, "back", "", false)
	require.ErrorContains(t, err, "has no image yet")
	pvc, err := restoreClaim(rd, "back", "", true)
	require.NoError(t, err)
	assert.Equal(t, "ReplicationDestination", pvc.Spec.DataSourceRef.Kind)
	rd.Status.LatestImage = &corev1.TypedLocalObjectReference{APIGroup: ptr.To("snapshot.storage.k8s.io"), Kind: "VolumeSnapshot", Name: "db-1"}
	pvc, err = restoreClaim(rd, "back", "fast", false)
	require.NoError(t, err)
	assert.Equal(t, &corev1.TypedObjectReference{APIGroup: ptr.To("snapshot.storage.k8s.io"), Kind: "VolumeSnapshot", Name: "db-1"}, pvc.Spec.DataSourceRef)
	assert.Equal(t, "3Gi", ptr.To(pvc.Spec.Resources.Requests[corev1.ResourceStorage]).String())
	assert.Equal(t, "fast", *pvc.Spec.StorageClassName)
	assert.Equal(t, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, pvc.Spec.AccessModes)
}

// TestPairKeepsTheUsersTrigger: pairing again without a schedule keeps the
// manual value a sync set (resetting it would start a sync); a schedule
// asked for replaces it.
func TestPairKeepsTheUsersTrigger(t *testing.T) {
	p, err := planPair(claim(), "dr", defaults())
	require.NoError(t, err)
	have := p.source.DeepCopy()
	have.Spec.Trigger.Manual = "kubectl-ferry-20261205T070237.097"
	require.NoError(t, setSpec(have, p.source))
	assert.Equal(t, "kubectl-ferry-20261205T070237.097", have.Spec.Trigger.Manual)

	o := defaults()
	o.schedule = "0 * * * *"
	p, err = planPair(claim(), "dr", o)
	require.NoError(t, err)
	require.NoError(t, setSpec(have, p.source))
	assert.Equal(t, &volsyncv1alpha1.TriggerSpec{Schedule: ptr.To("0 * * * *")}, have.Spec.Trigger)
}
