// Package nodeagent_test runs two node agents as processes on two simulated
// nodes, each in its own network namespace, against a real apiserver, CSI
// driver, snapshot controller, ssh and rsync, with MountAssignments written
// by hand in place of the controller.
package nodeagent_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ferrysync/ferry/internal/testenv"
	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	"github.com/ferrysync/ferry/pkg/transfer/sender"
	"github.com/ferrysync/ferry/test/harness"
)

// TestAgentsReplicate: node B's agent publishes a destination PVC and serves
// it; node A's agent pushes a snapshot-restored copy of a source PVC to it
// across the namespaces' link. The replica matches, both agents' metrics show
// the bytes, the destination holds after the sync. The cases that follow
// (each a subtest, so one failing does not hide the others) sync again,
// interrupt transfers on either end (kill -9, SIGTERM), queue, publish
// kubelet's mount, refuse what the agent must not do, and clean up.
func TestAgentsReplicate(t *testing.T) {
	testenv.NeedRoot(t) // skips in -short: it starts a cluster
	r := startReplication(t)
	r.firstPair(t)
	r.firstSync(t)
	for _, c := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"a second sync of an unchanged copy sends nothing", r.unchanged},
		{"a sync after a small change: only what changed", r.smallChange},
		{"kill -9 of the source's agent mid-transfer", r.killSource},
		{"kill -9 of the destination's agent mid-transfer", r.killDestination},
		{"SIGTERM of the source's agent past the grace period aborts the sync", r.sigtermSourceAborts},
		{"SIGTERM of the source's agent within the grace period lets the sync finish", r.sigtermSourceFinishes},
		{"SIGTERM of the destination's agent past the grace period cuts the sync and reports it", r.sigtermDestinationCuts},
		{"SIGTERM of the destination's agent within the grace period lets the sync finish", r.sigtermDestinationFinishes},
		{"a second source queues for the node's one slot", r.queue},
		{"copyMethod Direct binds kubelet's mount of the pod's volume", r.direct},
		{"an assignment that says privileged in a namespace that does not allow it receives as an ordinary user", r.unprivileged},
		{"an attach-required destination waits for its attachment and survives a re-attach", r.attachRequired},
		{"an assignment for a PV no Ferry CR owns is refused", r.refused},
		{"a node agent's credentials write only its own node's assignments, and no spec", r.credentials},
		{"deleting the assignments unmounts everything; the agents stop cleanly", r.cleanup},
	} {
		t.Run(c.name, c.run)
	}
}

// firstSync checks the first pair's sync: the replica matches the copy on
// both agents' word and metrics, the destination holds, the source's copy
// is unmounted.
func (r *replication) firstSync(t *testing.T) {
	res := r.synced(t, r.src.Name, 1)
	require.True(t, res.Succeeded, "sync 1: %s", res.Error)
	assert.Greater(t, res.BytesSent, int64(3<<20))
	assert.Contains(t, res.Summary, "Number of files")
	dres := r.synced(t, r.dst.Name, 1)
	require.True(t, dres.Succeeded, dres.Error)
	assert.Equal(t, r.want, harness.Tree(t, r.replicaDir), "the replica matches the point-in-time copy")
	assert.Equal(t, agentv1alpha1.PhaseHolding, r.get(t, r.dst.Name).Status.Phase)
	assert.Equal(t, agentv1alpha1.PhaseCompleted, r.get(t, r.src.Name).Status.Phase)
	assert.Empty(t, r.get(t, r.src.Name).Status.MountPath, "the source's copy is unmounted after the sync")
	assertNotMounted(t, r.nodeA, r.src.Name)
	assert.GreaterOrEqual(t, r.agentA.Metric("ferry_agent_bytes_total", map[string]string{"node": r.nodeA.Name, "obj_namespace": "app", "obj_name": "rs", "role": "source", "direction": "sent"}), float64(3<<20))
	assert.GreaterOrEqual(t, r.agentB.Metric("ferry_agent_bytes_total", map[string]string{"node": r.nodeB.Name, "obj_namespace": "app", "obj_name": "rd", "role": "destination", "direction": "received"}), float64(3<<20))
	assert.Equal(t, 1.0, r.agentA.Metric("ferry_agent_syncs_total", map[string]string{"role": "source", "result": "succeeded"}))
	assert.Equal(t, 1.0, r.agentB.Metric("ferry_agent_syncs_total", map[string]string{"role": "destination", "result": "succeeded"}))
}

// unchanged: a second sync of the same copy is skipped, and still a
// completed sync on both ends. (Its time is measured in make bench.)
func (r *replication) unchanged(t *testing.T) {
	r.release(t, r.dst.Name)
	r.update(t, r.src.Name, func(ma *agentv1alpha1.MountAssignment) { ma.Spec.SyncGeneration = 2 })
	res := r.synced(t, r.src.Name, 2)
	require.True(t, res.Succeeded, res.Error)
	assert.Contains(t, res.Summary, "unchanged since the last sync", "the tree is as the destination received it: no rsync")
	assert.Zero(t, res.BytesSent)
	assert.Equal(t, 1.0, r.agentA.Metric("ferry_agent_unchanged_syncs_total", map[string]string{"node": r.nodeA.Name, "role": "source"}))
	require.True(t, r.synced(t, r.dst.Name, 2).Succeeded, "the destination counts it a completed sync")
	assert.Equal(t, r.want, harness.Tree(t, r.replicaDir))
}

// smallChange: after a small change only the changes are listed and sent.
func (r *replication) smallChange(t *testing.T) {
	r.writeSource(t, func(dir string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, "app/config.yaml"), []byte("replicas: 5\n"), 0o640))
		require.NoError(t, os.Remove(filepath.Join(dir, "app/current")))
		harness.WriteRandom(t, filepath.Join(dir, "app/logs/0002.log"), 64<<10)
	})
	copyPV := r.snapshotOf(t, "data-pit-2")
	r.release(t, r.dst.Name)
	gen := r.nextSync(t, copyPV)
	res := r.synced(t, r.src.Name, gen)
	require.True(t, res.Succeeded, res.Error)
	assert.Contains(t, res.Summary, sender.IncrementalSummary, "the destination holds what sync 2 left: only the changes are listed")
	assert.Less(t, res.BytesSent, int64(1<<20), "the 3 MiB log is not sent again")
	assert.Equal(t, 1.0, r.agentA.Metric("ferry_agent_incremental_syncs_total", map[string]string{"node": r.nodeA.Name, "role": "source"}))
	require.True(t, r.synced(t, r.dst.Name, gen).Succeeded)
	assert.Equal(t, r.want, harness.Tree(t, r.replicaDir), "the replica matches the new copy: the rewrite (hard link kept), the new log, the symlink gone")
}
