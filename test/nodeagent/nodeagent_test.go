// Package nodeagent_test runs two node agents as processes on two simulated
// nodes, each in its own network namespace, against a real apiserver, CSI
// driver, snapshot controller, ssh and rsync, with MountAssignments written
// by hand in place of the controller.
package nodeagent_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/assign"
	"github.com/ferrysync/ferry/pkg/csi"
	"github.com/ferrysync/ferry/pkg/mount"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
	"github.com/ferrysync/ferry/pkg/transfer/sender"
	"github.com/ferrysync/ferry/pkg/transfer/sshkeys"
	"github.com/ferrysync/ferry/test/cluster"
	"github.com/ferrysync/ferry/test/harness"
)

// TestAgentsReplicate: node B's agent publishes a destination PVC and serves
// it; node A's agent pushes a snapshot-restored copy of a source PVC to it
// across the namespaces' link. The replica matches, both agents' metrics show
// the bytes, the destination holds after the sync. Then each agent is killed
// with SIGKILL in the middle of a transfer and started again: the
// interrupted sync is reported failed and not run again, the next one
// succeeds, and nothing leaks. An assignment for a PV no Ferry CR owns is
// refused without mounting anything.
func TestAgentsReplicate(t *testing.T) {
	testenv.NeedRoot(t)
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	ctx := context.Background()
	network, err := cluster.NewNetwork("fa", "10.252.0")
	require.NoError(t, err)
	defer func() { assert.NoError(t, network.Close()) }()
	c, err := cluster.Start(ctx, cluster.Options{Network: network, ServiceCIDR: "10.96.0.0/24", Log: testr.New(t)})
	require.NoError(t, err)
	defer func() {
		if t.Failed() {
			t.Log(c.Logs(60))
		}
		assert.NoError(t, c.Stop())
	}()
	k := c.Client
	nodeA, nodeB := c.Nodes[0], c.Nodes[1]
	// A 400 Mbit/s link out of node A, like a modest cluster network: big
	// transfers take seconds, so the test can act in their middle.
	out, err := exec.Command("ip", "netns", "exec", nodeA.Net.Namespace,
		"tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "400mbit", "burst", "256kb", "latency", "50ms").CombinedOutput()
	require.NoError(t, err, "%s", out)
	var agents []*harness.Proc
	defer func() {
		// A failed run leaves the agents' mounts: stop the agents and take
		// down what they published, so the cluster can stop cleanly.
		for _, a := range agents {
			_, _ = a.Stop()
		}
		for _, n := range c.Nodes {
			p := csi.NewPublisher(csi.DefaultRoot(n.KubeletDir), n.KubeletDir, testr.New(t))
			assert.NoError(t, p.Recover(ctx, func(string) bool { return false }))
			_ = p.Close()
		}
	}()

	// What the controller would have made: the CRs, key Secrets, the
	// replica PVC and the source's point-in-time copy.
	// "app" allows privileged movers: the replica keeps owners.
	privileged := map[string]string{volsyncv1alpha1.PrivilegedMoversAnnotation: "true"}
	require.NoError(t, k.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "app", Annotations: privileged}}))
	require.NoError(t, k.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ferryNamespace}}))
	rs := &volsyncv1alpha1.ReplicationSource{ObjectMeta: metav1.ObjectMeta{Name: "rs", Namespace: "app"},
		Spec: volsyncv1alpha1.ReplicationSourceSpec{SourcePVC: "data",
			Rsync: &volsyncv1alpha1.ReplicationSourceRsyncSpec{ReplicationSourceVolumeOptions: volsyncv1alpha1.ReplicationSourceVolumeOptions{CopyMethod: volsyncv1alpha1.CopyMethodSnapshot}}}}
	rd := &volsyncv1alpha1.ReplicationDestination{ObjectMeta: metav1.ObjectMeta{Name: "rd", Namespace: "app"},
		Spec: volsyncv1alpha1.ReplicationDestinationSpec{Rsync: &volsyncv1alpha1.ReplicationDestinationRsyncSpec{
			ReplicationDestinationVolumeOptions: volsyncv1alpha1.ReplicationDestinationVolumeOptions{CopyMethod: volsyncv1alpha1.CopyMethodSnapshot,
				Capacity: ptr.To(resource.MustParse("1Gi")), AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}}}}}
	require.NoError(t, k.Create(ctx, rs))
	require.NoError(t, k.Create(ctx, rd))
	dstKeys, srcKeys, err := sshkeys.Secrets()
	require.NoError(t, err)
	require.NoError(t, k.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "rd-keys", Namespace: ferryNamespace}, Data: dstKeys}))
	require.NoError(t, k.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "rs-keys", Namespace: ferryNamespace}, Data: srcKeys}))

	data := bound(t, c, pvc("app", "data", nil, nil))
	replica := bound(t, c, pvc("app", "replica", nil, rd))
	work := t.TempDir()
	writeSource := func(t *testing.T, fn func(dir string)) {
		t.Helper()
		dir, unmount, err := cluster.MountVolume(ctx, nodeA.PluginSocket(cluster.DriverName), data.Spec.CSI.VolumeHandle, work, false, nil)
		require.NoError(t, err)
		fn(dir)
		require.NoError(t, unmount())
	}
	var want map[string]string
	snapshotOf := func(t *testing.T, name string) *corev1.PersistentVolume {
		t.Helper()
		dir, unmount, err := cluster.MountVolume(ctx, nodeA.PluginSocket(cluster.DriverName), data.Spec.CSI.VolumeHandle, work, true, nil)
		require.NoError(t, err)
		want = harness.Tree(t, dir)
		require.NoError(t, unmount())
		return snapshotClaim(t, c, "app", "data", name, rs)
	}
	writeSource(t, func(dir string) {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, "app/logs"), 0o750))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "app/config.yaml"), []byte("replicas: 3\n"), 0o640))
		require.NoError(t, os.Chown(filepath.Join(dir, "app/config.yaml"), 1000, 2000))
		require.NoError(t, os.Symlink("config.yaml", filepath.Join(dir, "app/current")))
		require.NoError(t, os.Link(filepath.Join(dir, "app/config.yaml"), filepath.Join(dir, "app/config.hardlink")))
		harness.WriteRandom(t, filepath.Join(dir, "app/logs/0001.log"), 3<<20)
		// A setuid and setgid binary of root's: kept by a privileged
		// destination, never planted as such by an unprivileged one.
		require.NoError(t, os.WriteFile(filepath.Join(dir, "app/tool"), []byte("#!/bin/sh\nid\n"), 0o755))
		require.NoError(t, os.Chmod(filepath.Join(dir, "app/tool"), 0o6755))
	})
	pit := snapshotOf(t, "data-pit-1")

	// One transfer at a time on node A, so that a second one queues.
	agentA, agentB := bins.StartAgent(t, c, nodeA, "--max-transfers=1"), bins.StartAgent(t, c, nodeB)
	agents = append(agents, agentA, agentB)

	get := func(t *testing.T, name string) *agentv1alpha1.MountAssignment {
		t.Helper()
		ma := &agentv1alpha1.MountAssignment{}
		require.NoError(t, k.Get(ctx, client.ObjectKey{Namespace: ferryNamespace, Name: name}, ma))
		return ma
	}
	update := func(t *testing.T, name string, fn func(*agentv1alpha1.MountAssignment)) {
		t.Helper()
		ma := get(t, name)
		fn(ma)
		require.NoError(t, k.Update(ctx, ma))
	}
	synced := func(t *testing.T, name string, gen int64) *agentv1alpha1.SyncResult {
		t.Helper()
		var last *agentv1alpha1.SyncResult
		testenv.Eventually(t, name+" to report sync "+strconv.FormatInt(gen, 10), 2*time.Minute, func() bool {
			last = get(t, name).Status.LastSync
			return last != nil && last.Generation >= gen
		})
		return last
	}

	dst := &agentv1alpha1.MountAssignment{ObjectMeta: metav1.ObjectMeta{Name: "rd-replica", Namespace: ferryNamespace},
		Spec: agentv1alpha1.MountAssignmentSpec{NodeName: nodeB.Name,
			Owner:          agentv1alpha1.OwnerReference{Kind: "ReplicationDestination", Namespace: "app", Name: "rd", UID: string(rd.UID)},
			Volume:         volumeOf(replica),
			Destination:    &agentv1alpha1.DestinationRole{KeySecret: agentv1alpha1.SecretReference{Namespace: ferryNamespace, Name: "rd-keys"}, Privileged: true},
			SyncGeneration: 1}}
	// served waits until a destination assignment is served and returns
	// where.
	served := func(t *testing.T, name string) *agentv1alpha1.Endpoint {
		t.Helper()
		var ep *agentv1alpha1.Endpoint
		testenv.Eventually(t, name+" to be served", time.Minute, func() bool {
			ma := get(t, name)
			ep = ma.Status.Endpoint
			return ma.Status.Phase == agentv1alpha1.PhaseMounted && ep != nil
		})
		return ep
	}
	require.NoError(t, k.Create(ctx, dst))
	ep := served(t, dst.Name)
	require.Equal(t, nodeB.Net.IP, ep.Address)
	replicaDir := get(t, dst.Name).Status.MountPath

	created := time.Now()
	src := &agentv1alpha1.MountAssignment{ObjectMeta: metav1.ObjectMeta{Name: "rs-data", Namespace: ferryNamespace},
		Spec: agentv1alpha1.MountAssignmentSpec{NodeName: nodeA.Name,
			Owner:  agentv1alpha1.OwnerReference{Kind: "ReplicationSource", Namespace: "app", Name: "rs", UID: string(rs.UID)},
			Volume: volumeOf(pit),
			Source: &agentv1alpha1.SourceRole{Address: ep.Address, Port: ep.Port, User: "root", Path: "/",
				KeySecret: agentv1alpha1.SecretReference{Namespace: ferryNamespace, Name: "rs-keys"}, Privileged: true},
			SyncGeneration: 1}}
	require.NoError(t, k.Create(ctx, src))
	res := synced(t, src.Name, 1)
	t.Logf("per-sync overhead, first sync of a small volume (assignment created → result reported): %v", time.Since(created))
	require.True(t, res.Succeeded, "sync 1: %s", res.Error)
	assert.Greater(t, res.BytesSent, int64(3<<20))
	assert.Contains(t, res.Summary, "Number of files")
	dres := synced(t, dst.Name, 1)
	require.True(t, dres.Succeeded, dres.Error)
	assert.Equal(t, want, harness.Tree(t, replicaDir), "the replica matches the point-in-time copy")
	assert.Equal(t, agentv1alpha1.PhaseHolding, get(t, dst.Name).Status.Phase)
	assert.Equal(t, agentv1alpha1.PhaseCompleted, get(t, src.Name).Status.Phase)
	assert.Empty(t, get(t, src.Name).Status.MountPath, "the source's copy is unmounted after the sync")
	assertNotMounted(t, nodeA, src.Name)
	assert.GreaterOrEqual(t, agentA.Metric("ferry_agent_bytes_total", map[string]string{"node": nodeA.Name, "obj_namespace": "app", "obj_name": "rs", "role": "source", "direction": "sent"}), float64(3<<20))
	assert.GreaterOrEqual(t, agentB.Metric("ferry_agent_bytes_total", map[string]string{"node": nodeB.Name, "obj_namespace": "app", "obj_name": "rd", "role": "destination", "direction": "received"}), float64(3<<20))
	assert.Equal(t, 1.0, agentA.Metric("ferry_agent_syncs_total", map[string]string{"role": "source", "result": "succeeded"}))
	assert.Equal(t, 1.0, agentB.Metric("ferry_agent_syncs_total", map[string]string{"role": "destination", "result": "succeeded"}))

	// What the scenarios below share; each runs as a named subtest, so one
	// failing does not hide the others.
	var gen int64
	var second, direct, dst2, dst3, refused *agentv1alpha1.MountAssignment
	var attachedPV *corev1.PersistentVolume
	t.Run("a second sync of an unchanged copy sends nothing", func(t *testing.T) {
		// A second sync of the same copy: skipped, and still a completed
		// sync on both ends. (Its time is measured in make bench.)
		update(t, dst.Name, func(ma *agentv1alpha1.MountAssignment) { ma.Spec.SyncGeneration = 2 })
		testenv.Eventually(t, "the destination to be released", time.Minute, func() bool { return get(t, dst.Name).Status.Phase == agentv1alpha1.PhaseMounted })
		update(t, src.Name, func(ma *agentv1alpha1.MountAssignment) { ma.Spec.SyncGeneration = 2 })
		res := synced(t, src.Name, 2)
		require.True(t, res.Succeeded, res.Error)
		assert.Contains(t, res.Summary, "unchanged since the last sync", "the tree is as the destination received it: no rsync")
		assert.Zero(t, res.BytesSent)
		assert.Equal(t, 1.0, agentA.Metric("ferry_agent_unchanged_syncs_total", map[string]string{"node": nodeA.Name, "role": "source"}))
		require.True(t, synced(t, dst.Name, 2).Succeeded, "the destination counts it a completed sync")
		assert.Equal(t, want, harness.Tree(t, replicaDir))
	})

	t.Run("a sync after a small change: only what changed", func(t *testing.T) {
		writeSource(t, func(dir string) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "app/config.yaml"), []byte("replicas: 5\n"), 0o640))
			require.NoError(t, os.Remove(filepath.Join(dir, "app/current")))
			harness.WriteRandom(t, filepath.Join(dir, "app/logs/0002.log"), 64<<10)
		})
		copyPV := snapshotOf(t, "data-pit-2")
		update(t, dst.Name, func(ma *agentv1alpha1.MountAssignment) { ma.Spec.SyncGeneration = 3 })
		testenv.Eventually(t, "the destination to be released", time.Minute, func() bool { return get(t, dst.Name).Status.Phase == agentv1alpha1.PhaseMounted })
		update(t, src.Name, func(ma *agentv1alpha1.MountAssignment) { ma.Spec.Volume, ma.Spec.SyncGeneration = volumeOf(copyPV), 3 })
		res := synced(t, src.Name, 3)
		require.True(t, res.Succeeded, res.Error)
		assert.Contains(t, res.Summary, sender.IncrementalSummary, "the destination holds what sync 2 left: only the changes are listed")
		assert.Less(t, res.BytesSent, int64(1<<20), "the 3 MiB log is not sent again")
		assert.Equal(t, 1.0, agentA.Metric("ferry_agent_incremental_syncs_total", map[string]string{"node": nodeA.Name, "role": "source"}))
		require.True(t, synced(t, dst.Name, 3).Succeeded)
		assert.Equal(t, want, harness.Tree(t, replicaDir), "the replica matches the new copy: the rewrite (hard link kept), the new log, the symlink gone")
	})

	// Big enough that a transfer is still running when the test acts.
	const big = 128 << 20
	// bigSyncUnderWay replaces the source's big file with a new one,
	// cuts a point-in-time copy, releases the destination, asks for the
	// next sync of the copy and returns its generation once it is sending
	// (and far from done).
	bigSyncUnderWay := func(t *testing.T, n int) int64 {
		t.Helper()
		writeSource(t, func(dir string) {
			_ = os.Remove(filepath.Join(dir, fmt.Sprintf("big-%d", n-1)))
			harness.WriteRandom(t, filepath.Join(dir, fmt.Sprintf("big-%d", n)), big)
		})
		copyPV := snapshotOf(t, fmt.Sprintf("data-big-%d", n))
		update(t, dst.Name, func(ma *agentv1alpha1.MountAssignment) { ma.Spec.SyncGeneration++ })
		testenv.Eventually(t, "the destination to be released", time.Minute, func() bool { return get(t, dst.Name).Status.Phase == agentv1alpha1.PhaseMounted })
		gen := get(t, src.Name).Spec.SyncGeneration + 1
		update(t, src.Name, func(ma *agentv1alpha1.MountAssignment) {
			ma.Spec.Volume, ma.Spec.SyncGeneration = volumeOf(copyPV), gen
		})
		var cs *agentv1alpha1.SyncProgress
		testenv.Eventually(t, "the transfer to be under way", time.Minute, func() bool {
			cs = get(t, src.Name).Status.CurrentSync
			return cs != nil && cs.Generation == gen && cs.BytesDone > 0
		})
		require.Less(t, cs.BytesDone, int64(big/2), "still early in the transfer")
		return gen
	}
	// nextSucceeds asks for one more sync and checks it and the replica.
	nextSucceeds := func(t *testing.T, after int64, why string) {
		t.Helper()
		update(t, src.Name, func(ma *agentv1alpha1.MountAssignment) { ma.Spec.SyncGeneration = after + 1 })
		res := synced(t, src.Name, after+1)
		require.True(t, res.Succeeded, "the sync after %s: %s", why, res.Error)
		assert.Equal(t, after+1, res.Generation, "generation %d was not run again", after)
		assert.NotContains(t, res.Summary, "unchanged since the last sync", "an interrupted sync leaves no record: rsync runs in full")
		assert.NotContains(t, res.Summary, sender.IncrementalSummary, "an interrupted sync leaves no record: rsync runs over the whole tree")
	}

	t.Run("kill -9 of the source's agent mid-transfer", func(t *testing.T) {
		// Kill -9 the source's agent mid-transfer.
		gen = bigSyncUnderWay(t, 1)
		agentA.Kill()
		agentA.Start()
		res = synced(t, src.Name, gen)
		require.False(t, res.Succeeded)
		assert.Contains(t, res.Error, "interrupted")
		assertNotMounted(t, nodeA, src.Name)
		nextSucceeds(t, gen, "the source's kill")
		require.True(t, get(t, dst.Name).Status.LastSync.Succeeded)
		assert.Equal(t, want, harness.Tree(t, replicaDir))
	})

	t.Run("kill -9 of the destination's agent mid-transfer", func(t *testing.T) {
		// Kill -9 the destination's agent mid-transfer.
		gen = bigSyncUnderWay(t, 2)
		agentB.Kill()
		agentB.Start()
		require.Equal(t, replicaDir, get(t, dst.Name).Status.MountPath, "the restarted agent adopts the same mount")
		require.Equal(t, ep.Port, get(t, dst.Name).Status.Endpoint.Port, "and serves it on the same port")
		if res = synced(t, src.Name, gen); !res.Succeeded {
			// The source's retries may run out while the destination restarts;
			// then the next sync must succeed.
			t.Logf("sync %d failed across the destination's restart (%s)", gen, res.Error)
			nextSucceeds(t, gen, "the destination's kill")
		}
		require.True(t, get(t, dst.Name).Status.LastSync.Succeeded)
		assert.Equal(t, want, harness.Tree(t, replicaDir))
	})

	// sigtermMidTransfer restarts the source's agent with grace, starts big
	// sync n, stops the agent with SIGTERM (waiting up to limit) and returns
	// the sync's reported end and how long the agent took to exit; it
	// leaves the agent running again with its usual flags.
	sigtermMidTransfer := func(t *testing.T, grace string, n int, limit time.Duration) (*agentv1alpha1.SyncResult, time.Duration) {
		t.Helper()
		_, err := agentA.Stop()
		require.NoError(t, err)
		agentA.StartWith("--grace-period=" + grace)
		gen = bigSyncUnderWay(t, n)
		took, err := agentA.StopWithin(limit)
		require.NoError(t, err, "the agent exits cleanly on SIGTERM")
		res := get(t, src.Name).Status.LastSync
		require.NotNil(t, res)
		require.Equal(t, gen, res.Generation, "the sync's end is reported before the agent exits")
		assertNotMounted(t, nodeA, src.Name)
		agentA.Start()
		return res, took
	}

	t.Run("SIGTERM past the grace period aborts the sync", func(t *testing.T) {
		// A grace period far shorter than what is left of the transfer:
		// the agent aborts the sync, reports it aborted and unmounts.
		res, took := sigtermMidTransfer(t, "1ms", 3, 30*time.Second)
		assert.Less(t, took, 15*time.Second, "at once: the grace period is over")
		require.False(t, res.Succeeded, "a sync cut off by shutdown is not reported succeeded")
		assert.Contains(t, res.Error, "aborted: the node agent is shutting down")
		nextSucceeds(t, gen, "the abort")
		assert.Equal(t, want, harness.Tree(t, replicaDir))
	})

	t.Run("SIGTERM within the grace period lets the sync finish", func(t *testing.T) {
		// A grace period longer than the transfer: the agent waits for it,
		// reports it succeeded, and only then exits.
		res, took := sigtermMidTransfer(t, "2m", 4, 3*time.Minute)
		require.True(t, res.Succeeded, "the sync finished within the grace period: %s", res.Error)
		t.Logf("SIGTERM mid-transfer: the agent finished the sync and stopped in %v", took)
		require.True(t, get(t, dst.Name).Status.LastSync.Succeeded)
		assert.Equal(t, want, harness.Tree(t, replicaDir))
	})

	t.Run("a second source queues for the node's one slot", func(t *testing.T) {
		// With one transfer slot on node A, a second source waits, Queued,
		// while the first sends, then runs.
		replica2 := bound(t, c, pvc("app", "replica-2", nil, rd))
		dst2 = dst.DeepCopy()
		dst2.ObjectMeta = metav1.ObjectMeta{Name: "rd-replica-2", Namespace: ferryNamespace}
		dst2.Spec.Volume, dst2.Status = volumeOf(replica2), agentv1alpha1.MountAssignmentStatus{}
		require.NoError(t, k.Create(ctx, dst2))
		var ep2 *agentv1alpha1.Endpoint
		testenv.Eventually(t, "the second destination to be served", time.Minute, func() bool {
			ep2 = get(t, dst2.Name).Status.Endpoint
			return ep2 != nil
		})
		gen = bigSyncUnderWay(t, 5)
		second = &agentv1alpha1.MountAssignment{ObjectMeta: metav1.ObjectMeta{Name: "rs-data-2", Namespace: ferryNamespace}, Spec: *get(t, src.Name).Spec.DeepCopy()}
		second.Spec.Source.Port, second.Spec.SyncGeneration = ep2.Port, 1
		require.NoError(t, k.Create(ctx, second))
		testenv.Eventually(t, "the second source to queue", time.Minute, func() bool {
			return get(t, second.Name).Status.Phase == agentv1alpha1.PhaseQueued
		})
		// The gauge counts it while it waits: read while the first still sends
		// (so the second cannot have its slot yet).
		queued := agentA.Metric("ferry_agent_queued_transfers", map[string]string{"node": nodeA.Name})
		require.NotNil(t, get(t, src.Name).Status.CurrentSync, "the first transfer still runs after the gauge was read")
		assert.Equal(t, 1.0, queued, "one source waits for a slot")
		first := synced(t, src.Name, gen)
		require.True(t, first.Succeeded)
		after := synced(t, second.Name, 1)
		require.True(t, after.Succeeded, "the queued one runs after")
		assert.False(t, after.StartTime.Before(first.EndTime), "it started once the first had ended")
		assert.Equal(t, want, harness.Tree(t, get(t, dst2.Name).Status.MountPath))
	})

	t.Run("copyMethod Direct binds kubelet's mount of the pod's volume", func(t *testing.T) {
		// copyMethod Direct with a pod on node A using the source PVC: the
		// agent binds kubelet's mount of it read-only instead of staging the
		// volume again, pushes, and leaves the pod's mount alone.
		podMount := filepath.Join(nodeA.KubeletDir, "pods", "4a5b6c7d-pod", "volumes", "kubernetes.io~csi", data.Name, "mount")
		unmountPod, err := cluster.MountVolumeAt(ctx, nodeA.PluginSocket(cluster.DriverName), data.Spec.CSI.VolumeHandle,
			filepath.Join(nodeA.KubeletDir, "plugins", "kubernetes.io", "csi", cluster.DriverName, "globalmount-data"), podMount, false, nil)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(podMount, "written-by-the-pod"), []byte("live data"), 0o644))
		wantDirect := harness.Tree(t, podMount)
		update(t, dst2.Name, func(ma *agentv1alpha1.MountAssignment) { ma.Spec.SyncGeneration++ })
		testenv.Eventually(t, "the second destination to be released", time.Minute, func() bool {
			return get(t, dst2.Name).Status.Phase == agentv1alpha1.PhaseMounted
		})
		direct = &agentv1alpha1.MountAssignment{ObjectMeta: metav1.ObjectMeta{Name: "rs-direct", Namespace: ferryNamespace}, Spec: *get(t, second.Name).Spec.DeepCopy()}
		direct.Spec.Volume, direct.Spec.SyncGeneration = volumeOf(data), 1
		direct.Spec.Volume.ReuseKubeletMount = true
		require.NoError(t, k.Create(ctx, direct))
		require.True(t, synced(t, direct.Name, 1).Succeeded)
		assert.Equal(t, wantDirect, harness.Tree(t, get(t, dst2.Name).Status.MountPath), "the replica has what the pod sees")
		mounted, err := mount.IsMountPoint(podMount)
		require.NoError(t, err)
		assert.True(t, mounted, "the pod's mount stays")
		assertNotMounted(t, nodeA, direct.Name)
		require.NoError(t, unmountPod())
		assert.Contains(t, agentA.Logs(), `"mount":"`+podMount+`"`, "published by binding kubelet's mount")
	})

	var dstUnpriv, srcUnpriv *agentv1alpha1.MountAssignment
	t.Run("an assignment that says privileged in a namespace that does not allow it receives as an ordinary user", func(t *testing.T) {
		// Whoever can write assignments (a compromised controller, or
		// another node's agent) cannot grant what the namespace does not:
		// the agent reads the annotation itself.
		setAnnotations := func(a map[string]string) {
			ns := &corev1.Namespace{}
			require.NoError(t, k.Get(ctx, client.ObjectKey{Name: "app"}, ns))
			ns.Annotations = a
			require.NoError(t, k.Update(ctx, ns))
		}
		setAnnotations(nil)
		defer setAnnotations(privileged)
		replicaPV := bound(t, c, pvc("app", "replica-unprivileged", nil, rd))
		dstUnpriv = dst.DeepCopy()
		dstUnpriv.ObjectMeta = metav1.ObjectMeta{Name: "rd-replica-unprivileged", Namespace: ferryNamespace}
		dstUnpriv.Spec.Volume, dstUnpriv.Spec.SyncGeneration, dstUnpriv.Status = volumeOf(replicaPV), 1, agentv1alpha1.MountAssignmentStatus{}
		require.True(t, dstUnpriv.Spec.Destination.Privileged, "the assignment claims privileged")
		require.NoError(t, k.Create(ctx, dstUnpriv))
		ep := served(t, dstUnpriv.Name)
		srcUnpriv = src.DeepCopy()
		srcUnpriv.ObjectMeta = metav1.ObjectMeta{Name: "rs-unprivileged", Namespace: ferryNamespace}
		srcUnpriv.Spec.Source.Port, srcUnpriv.Spec.SyncGeneration, srcUnpriv.Status = ep.Port, 1, agentv1alpha1.MountAssignmentStatus{}
		require.NoError(t, k.Create(ctx, srcUnpriv))
		res := synced(t, srcUnpriv.Name, 1)
		require.True(t, res.Succeeded, res.Error)
		dir := get(t, dstUnpriv.Name).Status.MountPath
		files := 0
		require.NoError(t, filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fi, err := os.Lstat(p)
			require.NoError(t, err)
			st := fi.Sys().(*syscall.Stat_t)
			assert.Equal(t, uint32(endpoint.DefaultRunAs.UID), st.Uid, "%s is the ordinary user's", p)
			assert.Zero(t, fi.Mode()&(os.ModeSetuid|os.ModeSetgid|os.ModeDevice), "%s: no setuid or setgid file, no device", p)
			files++
			return nil
		}))
		assert.Greater(t, files, 3)
		fi, err := os.Stat(filepath.Join(dir, "app/tool"))
		require.NoError(t, err, "the source's setuid binary arrived")
		assert.Equal(t, os.FileMode(0o755), fi.Mode().Perm()|fi.Mode()&(os.ModeSetuid|os.ModeSetgid), "without its setuid and setgid bits")
	})

	t.Run("an attach-required destination waits for its attachment and survives a re-attach", func(t *testing.T) {
		// A destination whose driver requires attach waits for the
		// controller's attachment, then serves; detached and attached again
		// (a new attachment UID), it is published anew with its data.
		attachedClaim := pvc("app", "replica-attached", nil, rd)
		attachedClaim.Spec.StorageClassName = ptr.To(cluster.AttachStorageClass)
		attachedPV = bound(t, c, attachedClaim)
		dst3 = dst.DeepCopy()
		dst3.ObjectMeta = metav1.ObjectMeta{Name: "rd-replica-attached", Namespace: ferryNamespace}
		dst3.Spec.Volume, dst3.Status = volumeOf(attachedPV), agentv1alpha1.MountAssignmentStatus{}
		require.NoError(t, k.Create(ctx, dst3))
		testenv.Eventually(t, "the destination to wait for its attachment", time.Minute, func() bool {
			cond := meta.FindStatusCondition(get(t, dst3.Name).Status.Conditions, agentv1alpha1.ConditionReady)
			return cond != nil && cond.Reason == agentv1alpha1.ReasonWaitingForAttach
		})
		attach := func(t *testing.T) {
			t.Helper()
			wctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			va, err := assign.WaitAttached(wctx, k, attachedPV.Spec.CSI.Driver, attachedPV.Spec.CSI.VolumeHandle, attachedPV.Name, nodeB.Name)
			require.NoError(t, err)
			update(t, dst3.Name, func(ma *agentv1alpha1.MountAssignment) {
				ma.Spec.Volume.Attachment = &agentv1alpha1.Attachment{Name: va.Name, UID: string(va.UID), Metadata: va.Status.AttachmentMetadata}
			})
			testenv.Eventually(t, "the attached destination to be served", time.Minute, func() bool {
				ma := get(t, dst3.Name)
				return ma.Status.Phase == agentv1alpha1.PhaseMounted && ma.Status.ObservedGeneration == ma.Generation
			})
		}
		attach(t)
		attachedDir := get(t, dst3.Name).Status.MountPath
		require.NoError(t, os.WriteFile(filepath.Join(attachedDir, "kept"), []byte("across a re-attach"), 0o600))
		require.NoError(t, assign.Detach(ctx, k, attachedPV.Name))
		attach(t)
		got, err := os.ReadFile(filepath.Join(get(t, dst3.Name).Status.MountPath, "kept"))
		require.NoError(t, err)
		assert.Equal(t, "across a re-attach", string(got))
		record, err := os.ReadFile(filepath.Join(csi.DefaultRoot(nodeB.KubeletDir), dst3.Name, "volume.json"))
		require.NoError(t, err)
		assert.Contains(t, string(record), get(t, dst3.Name).Spec.Volume.Attachment.UID, "published anew for the new attachment")
	})

	t.Run("an assignment for a PV no Ferry CR owns is refused", func(t *testing.T) {
		// An assignment for a PV no Ferry CR owns.
		stray := bound(t, c, pvc("app", "not-replicated", nil, nil))
		refused = &agentv1alpha1.MountAssignment{ObjectMeta: metav1.ObjectMeta{Name: "stray", Namespace: ferryNamespace},
			Spec: agentv1alpha1.MountAssignmentSpec{NodeName: nodeA.Name,
				Owner:  agentv1alpha1.OwnerReference{Kind: "ReplicationSource", Namespace: "app", Name: "rs", UID: string(rs.UID)},
				Volume: volumeOf(stray),
				Source: &agentv1alpha1.SourceRole{Address: ep.Address, Port: ep.Port,
					KeySecret: agentv1alpha1.SecretReference{Namespace: ferryNamespace, Name: "rs-keys"}},
				SyncGeneration: 1}}
		require.NoError(t, k.Create(ctx, refused))
		testenv.Eventually(t, "the stray assignment to be refused", time.Minute, func() bool {
			return get(t, refused.Name).Status.Phase == agentv1alpha1.PhaseRefused
		})
		cond := meta.FindStatusCondition(get(t, refused.Name).Status.Conditions, agentv1alpha1.ConditionReady)
		require.NotNil(t, cond)
		assert.Contains(t, cond.Message, "neither owned nor named by ReplicationSource rs")
		assertNotMounted(t, nodeA, refused.Name)
		assert.Nil(t, get(t, refused.Name).Status.LastSync, "nothing ran")
		// What kubectl describe shows: events on the assignments.
		for name, reason := range map[string]string{refused.Name: agentv1alpha1.ReasonRefused, src.Name: agentv1alpha1.ReasonSyncSucceeded, dst.Name: agentv1alpha1.ReasonServing} {
			testenv.Eventually(t, "a "+reason+" event on "+name, 30*time.Second, func() bool {
				list := &eventsv1.EventList{}
				require.NoError(t, k.List(ctx, list, client.InNamespace(ferryNamespace)))
				for _, e := range list.Items {
					if e.Regarding.Name == name && e.Reason == reason {
						return true
					}
				}
				return false
			})
		}
	})

	t.Run("a node agent's credentials write only its own node's assignments, and no spec", func(t *testing.T) {
		// What a compromised agent on node A could try with its token:
		// the own-node admission policy (deploy/nodeagent/rbac) refuses it.
		cfg, err := clientcmd.BuildConfigFromFlags("", harness.AgentKubeconfig(t, c, nodeA.Name))
		require.NoError(t, err)
		agentA, err := client.New(cfg, client.Options{Scheme: k.Scheme()})
		require.NoError(t, err)
		var denied error
		testenv.Eventually(t, "node A's agent to be denied node B's assignment", 30*time.Second, func() bool {
			ma := &agentv1alpha1.MountAssignment{}
			require.NoError(t, agentA.Get(ctx, client.ObjectKeyFromObject(dst), ma), "agents may read")
			ma.Status.Phase = agentv1alpha1.PhaseRefused
			denied = agentA.Status().Update(ctx, ma)
			return denied != nil
		})
		assert.ErrorContains(t, denied, "the node agent of node-a may write only its own node's MountAssignments")
		assert.Equal(t, agentv1alpha1.PhaseHolding, get(t, dst.Name).Status.Phase, "node B's assignment is unchanged")

		own := get(t, src.Name)
		require.NoError(t, agentA.Status().Update(ctx, own.DeepCopy()), "its own node's status")
		moved := get(t, src.Name)
		moved.Spec.NodeName = nodeB.Name
		assert.ErrorContains(t, agentA.Update(ctx, moved), "nodeName is immutable", "moving its assignment elsewhere")
		finalizer := get(t, src.Name)
		require.NoError(t, agentA.Update(ctx, finalizer), "its own node's assignment, spec unchanged (finalizers)")
		changed := get(t, src.Name)
		changed.Spec.Source.Address = "10.0.0.66"
		assert.ErrorContains(t, agentA.Update(ctx, changed), "may not change a MountAssignment's spec", "redirecting its own transfer")
		assert.Equal(t, ep.Address, get(t, src.Name).Spec.Source.Address)
	})

	t.Run("deleting the assignments unmounts everything; the agents stop cleanly", func(t *testing.T) {
		// Deleting the assignments unmounts everything; the agents stop cleanly.
		for _, ma := range []*agentv1alpha1.MountAssignment{src, dst, second, direct, dst2, dst3, refused, dstUnpriv, srcUnpriv} {
			if ma != nil { // nil: its subtest failed before making it
				require.NoError(t, client.IgnoreNotFound(k.Delete(ctx, ma)))
			}
		}
		testenv.Eventually(t, "the assignments to be released and gone", time.Minute, func() bool {
			list := &agentv1alpha1.MountAssignmentList{}
			require.NoError(t, k.List(ctx, list, client.InNamespace(ferryNamespace)))
			return len(list.Items) == 0
		})
		for _, n := range []cluster.Node{nodeA, nodeB} {
			mounts, err := mount.Under(csi.DefaultRoot(n.KubeletDir))
			require.NoError(t, err)
			assert.Empty(t, mounts, "mounts left on %s", n.Name)
		}
		for _, a := range []*harness.Proc{agentA, agentB} {
			took, err := a.Stop()
			assert.NoError(t, err, "the agent exits cleanly on SIGTERM")
			assert.Less(t, took, 15*time.Second)
		}
		// This test's own: other packages run transfers meanwhile. The source's
		// rsync and the remote-shell helpers name the binaries' directory.
		assert.Empty(t, testenv.Processes(t, bins.Dir), "transfer processes left behind")
		testenv.NoLoopDevices(t, c.Dir)
		if attachedPV != nil {
			require.NoError(t, assign.Detach(ctx, k, attachedPV.Name))
		}
	})
}

// assertNotMounted checks that nothing of an assignment is mounted on the
// node.
func assertNotMounted(t *testing.T, n cluster.Node, name string) {
	t.Helper()
	mounts, err := mount.Under(filepath.Join(csi.DefaultRoot(n.KubeletDir), name))
	require.NoError(t, err)
	assert.Empty(t, mounts, "%s still mounted on %s", name, n.Name)
}
