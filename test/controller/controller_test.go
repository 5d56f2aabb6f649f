package controller_test

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/cycle"
	"github.com/ferrysync/ferry/pkg/controller/snapshot"
	"github.com/ferrysync/ferry/test/harness"
)

// TestController runs the scenarios with Ferry running on two clusters:
// first, one at a time, those that count or break what others would share
// (the soak's counts see only its own syncs), then the rest in parallel.
func TestController(t *testing.T) {
	e := setup(t, shared, 18080)
	far := setup(t, remote, 18090)
	for _, s := range []scenario{
		{"the spec's flow: Clone source into a Snapshot destination, generated keys, ClusterIP", one(specFlow)},
		{"soak: many syncs through the CRs leave nothing behind", one(soak)},
		{"faults in the middle of syncs across clusters: each sync completes, no image holds a partial tree", faults},
		{"the controller killed -9 mid-sync finishes the sync; latestImage holds complete data", one(controllerKilled)},
		{"Ferry takes over a pair VolSync left mid-sync: same keys, claim and address; the next sync sends the change", one(takeoverVolSync)},
	} {
		t.Run(s.name, func(t *testing.T) { s.run(t, e, far) })
	}
	for _, s := range []scenario{
		{"a one-minute schedule keeps the replica current over three intervals", one(schedule)},
		{"VolSync's e2e: a yearly schedule syncs at once when new; a manual trigger beside it starts a sync", one(firstSyncAndManual)},
		{"VolSync's e2e: a 70- and a 240-character pair sync and restore", one(longNames)},
		{"Direct into Direct, user-given keys, LoadBalancer, unprivileged destination, paused", one(direct)},
		{"a destination whose driver requires attach is attached, and detached when deleted", one(attached)},
		{"every strict driver profile: a Clone source into a Snapshot destination, the restored image checked", one(driverProfiles)},
		{"cleanupTempPVC: the provisioned claim goes after each sync, the next gets a new one", one(tempClaim)},
		{"keys replaced in the user's Secret take effect at the next sync; the old key stops working", one(rotate)},
		{"copy triggers: the copy waits for the application's trigger, and the claim says where it stands", one(copyTriggers)},
		{"a claim whose dataSourceRef names the destination is filled from its latestImage", one(populate)},
		{"a pod that uses a destination's claim makes Ferry let go of it until the pod is gone", one(twoWriters)},
		{"moverResources: a transfer past its memory limit fails and says so", one(limited)},
		{"bad input ends in a condition that says what to fix", one(badInput)},
		{"VolSync's own source (stock OpenSSH and rsync) into a Ferry destination in another cluster", two(volsyncSourceIntoFerry)},
		{"a Ferry source into VolSync's own destination (stock sshd and rrsync)", one(ferryIntoVolSync)},
		{"a real Prometheus scrapes Ferry: every dashboard query has series; an alert fires for an unreachable destination and clears", one(monitoring)},
		{"kubectl ferry pairs across clusters, syncs, shows status and restores", two(kubectlFerry)},
		{"Snapshot source into a Direct destination in another cluster, LoadBalancer, the fidelity set", two(snapshotIntoDirect)},
	} {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			s.run(t, e, far)
		})
	}
}

// scenario is one of TestController's subtests: it runs against the source
// cluster's env and the far one's.
type scenario struct {
	name string
	run  func(t *testing.T, e, far *env)
}

// one is a scenario on the source cluster alone.
func one(fn func(*env)) func(*testing.T, *env, *env) {
	return func(t *testing.T, e, _ *env) { fn(e.with(t)) }
}

// two is a scenario across both clusters.
func two(fn func(src, dst *env)) func(*testing.T, *env, *env) {
	return func(t *testing.T, e, far *env) { fn(e.with(t), far.with(t)) }
}

// writeApp fills a volume with what a database volume holds: owned files,
// a hard link, a symlink, a sparse file and an odd name.
func writeApp(t testing.TB, dir string, generation string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "db/logs"), 0o750))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "db/config"), []byte("generation "+generation+"\n"), 0o640))
	require.NoError(t, os.Chown(filepath.Join(dir, "db/config"), 999, 999))
	_ = os.Remove(filepath.Join(dir, "db/config.link"))
	require.NoError(t, os.Link(filepath.Join(dir, "db/config"), filepath.Join(dir, "db/config.link")))
	_ = os.Remove(filepath.Join(dir, "db/current"))
	require.NoError(t, os.Symlink("config", filepath.Join(dir, "db/current")))
	harness.WriteRandom(t, filepath.Join(dir, "db/logs/binlog."+generation), 1<<20)
	f, err := os.Create(filepath.Join(dir, "db/sparse"))
	require.NoError(t, err)
	require.NoError(t, f.Truncate(64<<20))
	_, err = f.WriteAt([]byte(generation), 32<<20)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	require.NoError(t, os.WriteFile(filepath.Join(dir, "db/naïve name\twith tab"), []byte(generation), 0o600))
}

// specFlow walks the spec's "Copying the SSH key secret" flow: the
// destination (examples/volsync/destination.yaml) generates keys and
// publishes a ClusterIP address; the Secret is copied to the source's
// namespace as the spec does it; the source (source.yaml, Clone) pushes on
// a manual trigger; a claim restored from latestImage holds the source's
// data; a second sync replaces the image and deletes the old one; deleting
// both CRs leaves nothing behind.
func specFlow(e *env) {
	t, k, ctx := e.t, e.k, context.Background()
	privileged := map[string]string{volsyncv1alpha1.PrivilegedMoversAnnotation: "true"}
	e.namespace("dest", privileged)
	e.namespace("source", privileged)
	e.claim("source", "mysql-pv-claim", "1Gi", nil)
	e.onVolume("source", "mysql-pv-claim", false, func(dir string) { writeApp(t, dir, "1") })

	rd := &volsyncv1alpha1.ReplicationDestination{}
	harness.Example(t, "destination.yaml", rd)
	require.NoError(t, k.Create(ctx, rd))
	testenv.Eventually(t, "the destination's address and keys", time.Minute, func() bool {
		rd = e.rd("dest", "database-destination")
		return rd.Status.Rsync != nil && rd.Status.Rsync.Address != nil && rd.Status.Rsync.SSHKeys != nil
	})
	assert.Equal(t, "volsync-rsync-dst-src-database-destination", *rd.Status.Rsync.SSHKeys)
	svc := &corev1.Service{}
	require.NoError(t, k.Get(ctx, client.ObjectKey{Namespace: "dest", Name: "volsync-rsync-dst-database-destination"}, svc))
	assert.Equal(t, svc.Spec.ClusterIP, *rd.Status.Rsync.Address)
	assert.Equal(t, corev1.ServiceTypeClusterIP, svc.Spec.Type)
	for _, name := range []string{"volsync-rsync-dst-main-database-destination", "volsync-rsync-dst-dest-database-destination"} {
		require.NoError(t, k.Get(ctx, client.ObjectKey{Namespace: "dest", Name: name}, &corev1.Secret{}), name)
	}

	// "Copying the SSH key secret", as the spec does it.
	secret := &corev1.Secret{}
	require.NoError(t, k.Get(ctx, client.ObjectKey{Namespace: "dest", Name: *rd.Status.Rsync.SSHKeys}, secret))
	assert.ElementsMatch(t, []string{"source", "source.pub", "destination.pub"}, keysOf(secret.Data))
	copied := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "source", Name: secret.Name}, Data: secret.Data, Type: secret.Type}
	require.NoError(t, k.Create(ctx, copied))

	rs := &volsyncv1alpha1.ReplicationSource{}
	harness.Example(t, "source.yaml", rs)
	rs.Spec.Rsync.Address = rd.Status.Rsync.Address
	// A manual trigger in place of the example's ten-minute schedule.
	rs.Spec.Trigger = &volsyncv1alpha1.TriggerSpec{Manual: "first"}
	want := e.tree("source", "mysql-pv-claim")
	start := time.Now()
	require.NoError(t, k.Create(ctx, rs))
	rs = e.synced("source", "database-source", "first")
	t.Logf("first sync, source created → lastManualSync: %v", time.Since(start))
	assert.NotNil(t, rs.Status.LastSyncTime)
	assert.NotNil(t, rs.Status.LastSyncDuration)
	assert.Contains(t, rs.Status.LatestMoverStatus.Logs, "Number of files")
	// VolSync's mover's lines first, as its log filter keeps them, then Ferry's.
	assert.Regexp(t, `^sent [\d,]+ bytes  received [\d,]+ bytes  [\d,.]+ bytes/sec\ntotal size is [\d,]+  speedup is [\d,.]+\n`+
		`Rsync completed in \d+s\nFerry: sent \d+ bytes, \d+ files changed, from node node-[ab]\n`, rs.Status.LatestMoverStatus.Logs)
	assert.Equal(t, metav1.ConditionTrue, condition(&rs.Status.SyncStatus, volsyncv1alpha1.ConditionReconciled).Status)
	assert.Equal(t, volsyncv1alpha1.SynchronizingReasonManual, condition(&rs.Status.SyncStatus, volsyncv1alpha1.ConditionSynchronizing).Reason)
	testenv.Eventually(t, "the SyncCompleted event", time.Minute, func() bool { return len(e.events(rs, cycle.EventSyncCompleted)) > 0 })

	img := e.image("dest", "database-destination", "")
	testenv.Eventually(t, "the destination to record the sync", time.Minute, func() bool {
		rd = e.rd("dest", "database-destination")
		return rd.Status.LastSyncTime != nil
	})
	assert.Equal(t, "Reconcile complete", condition(&rd.Status.SyncStatus, volsyncv1alpha1.ConditionReconciled).Message)
	assert.Regexp(t, `^sent [\d,]+ bytes  received [\d,]+ bytes  [\d,.]+ bytes/sec\nRsync completed in \d+s\nFerry: received \d+ bytes`,
		rd.Status.LatestMoverStatus.Logs)
	assert.Equal(t, "VolumeSnapshot", rd.Status.LatestImage.Kind)
	assert.Equal(t, ptr.To("snapshot.storage.k8s.io"), rd.Status.LatestImage.APIGroup)
	assert.NotNil(t, rd.Status.LastSyncTime)
	assert.Equal(t, want, e.restored("dest", img), "the image holds the source's data")

	// The next sync: changed data, a new image, the old one gone.
	e.onVolume("source", "mysql-pv-claim", false, func(dir string) {
		require.NoError(t, os.Remove(filepath.Join(dir, "db/logs/binlog.1")))
		writeApp(t, dir, "2")
	})
	want = e.tree("source", "mysql-pv-claim")
	e.trigger("source", "database-source", "second")
	img2 := e.image("dest", "database-destination", img)
	assert.Equal(t, want, e.restored("dest", img2), "the new image holds the changed data")
	old := snapshot.New()
	old.SetNamespace("dest")
	old.SetName(img)
	testenv.Eventually(t, "the previous image to be deleted", time.Minute, func() bool { return gone(k, old) })

	// Deleting each CR leaves nothing of Ferry's behind.
	rsUID, rdUID := string(rs.UID), string(rd.UID)
	require.NoError(t, k.Delete(ctx, rs))
	testenv.Eventually(t, "the source to be gone", time.Minute, func() bool { return gone(k, rs) })
	assert.Empty(t, e.leftovers(rsUID, ""))
	rdPVC := &corev1.PersistentVolumeClaim{}
	require.NoError(t, k.Get(ctx, client.ObjectKey{Namespace: "dest", Name: "volsync-database-destination-dst"}, rdPVC))
	require.NoError(t, k.Delete(ctx, rd))
	testenv.Eventually(t, "the destination to be gone", time.Minute, func() bool { return gone(k, rd) })
	assert.Empty(t, e.leftovers(rdUID, rdPVC.Spec.VolumeName))
}

func keysOf(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// gone says whether obj no longer exists.
func gone(k client.Client, obj client.Object) bool {
	err := k.Get(context.Background(), client.ObjectKeyFromObject(obj), obj.DeepCopyObject().(client.Object))
	return client.IgnoreNotFound(err) == nil && err != nil
}
