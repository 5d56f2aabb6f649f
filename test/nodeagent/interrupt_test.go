package nodeagent_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	"github.com/ferrysync/ferry/pkg/transfer/sender"
	"github.com/ferrysync/ferry/test/harness"
)

// killSource: the source's agent is killed with SIGKILL mid-transfer and
// started again; the interrupted sync is reported failed, not run again,
// and the next one succeeds.
func (r *replication) killSource(t *testing.T) {
	gen := r.bigSyncUnderWay(t, 1)
	r.agentA.Kill()
	r.agentA.Start()
	res := r.synced(t, r.src.Name, gen)
	require.False(t, res.Succeeded)
	assert.Contains(t, res.Error, "interrupted")
	assertNotMounted(t, r.nodeA, r.src.Name)
	r.nextSucceeds(t, gen, "the source's kill")
	r.replicaMatches(t)
}

// killDestination: the destination's agent is killed with SIGKILL
// mid-transfer and started again; it adopts its mount and port, and the
// sync (retried by the source) or the next one succeeds.
func (r *replication) killDestination(t *testing.T) {
	gen := r.bigSyncUnderWay(t, 2)
	r.agentB.Kill()
	r.agentB.Start()
	require.Equal(t, r.replicaDir, r.get(t, r.dst.Name).Status.MountPath, "the restarted agent adopts the same mount")
	require.Equal(t, r.ep.Port, r.get(t, r.dst.Name).Status.Endpoint.Port, "and serves it on the same port")
	r.afterDestinationRestart(t, gen, "the destination's kill")
}

// sigtermSourceAborts: a grace period far shorter than what is left of
// the transfer: the agent aborts the sync, reports it aborted and unmounts
// before it exits.
func (r *replication) sigtermSourceAborts(t *testing.T) {
	gen, took := r.sigtermMidTransfer(t, r.agentA, "1ms", 3, 30*time.Second)
	assert.Less(t, took, 15*time.Second, "at once: the grace period is over")
	res := r.sourceEnded(t, gen)
	require.False(t, res.Succeeded, "a sync cut off by shutdown is not reported succeeded")
	assert.Contains(t, res.Error, "aborted: the node agent is shutting down")
	r.agentA.Start()
	r.nextSucceeds(t, gen, "the abort")
	r.replicaMatches(t)
}

// sigtermSourceFinishes: a grace period longer than the transfer: the
// agent waits for it, reports it succeeded, and only then exits.
func (r *replication) sigtermSourceFinishes(t *testing.T) {
	gen, took := r.sigtermMidTransfer(t, r.agentA, "2m", 4, 3*time.Minute)
	res := r.sourceEnded(t, gen)
	require.True(t, res.Succeeded, "the sync finished within the grace period: %s", res.Error)
	t.Logf("SIGTERM mid-transfer: the source's agent finished the sync and stopped in %v", took)
	r.agentA.Start()
	r.replicaMatches(t)
}

// sigtermDestinationCuts: the destination's agent, with no grace left,
// cuts the sync arriving, and says so in status before it exits (not
// Transferring); restarted, it serves again and the source's retry or the
// next sync succeeds.
func (r *replication) sigtermDestinationCuts(t *testing.T) {
	gen, took := r.sigtermMidTransfer(t, r.agentB, "1ms", 5, 30*time.Second)
	assert.Less(t, took, 15*time.Second, "at once: the grace period is over")
	assert.Equal(t, agentv1alpha1.PhaseMounted, r.get(t, r.dst.Name).Status.Phase,
		"the cut transfer's end is reported before the agent exits")
	r.agentB.Start()
	r.afterDestinationRestart(t, gen, "the destination's SIGTERM")
}

// sigtermDestinationFinishes: with a grace period longer than the
// transfer, the destination's agent lets the source finish, reports the
// completed sync (holding the replica) and only then exits.
func (r *replication) sigtermDestinationFinishes(t *testing.T) {
	gen, took := r.sigtermMidTransfer(t, r.agentB, "2m", 6, 3*time.Minute)
	t.Logf("SIGTERM mid-transfer: the destination's agent let the sync finish and stopped in %v", took)
	dst := r.get(t, r.dst.Name)
	require.NotNil(t, dst.Status.LastSync)
	assert.Equal(t, dst.Spec.SyncGeneration, dst.Status.LastSync.Generation, "the sync's end is reported before the agent exits")
	assert.True(t, dst.Status.LastSync.Succeeded, dst.Status.LastSync.Error)
	assert.Equal(t, agentv1alpha1.PhaseHolding, dst.Status.Phase)
	res := r.synced(t, r.src.Name, gen)
	require.True(t, res.Succeeded, "the source's sync was not cut: %s", res.Error)
	r.agentB.Start()
	r.replicaMatches(t)
}

// sigtermMidTransfer restarts agent a with a grace period, starts big sync
// n, stops a with SIGTERM (waiting up to limit) and returns the source's
// generation and how long a took to exit. The caller checks what was
// reported, then starts a again.
func (r *replication) sigtermMidTransfer(t *testing.T, a *harness.Proc, grace string, n int, limit time.Duration) (int64, time.Duration) {
	t.Helper()
	_, err := a.Stop()
	require.NoError(t, err)
	a.StartWith("--grace-period=" + grace)
	gen := r.bigSyncUnderWay(t, n)
	took, err := a.StopWithin(limit)
	require.NoError(t, err, "the agent exits cleanly on SIGTERM")
	return gen, took
}

// sourceEnded is the source's result of sync gen as the stopped agent
// left it, with its copy unmounted.
func (r *replication) sourceEnded(t *testing.T, gen int64) *agentv1alpha1.SyncResult {
	t.Helper()
	res := r.get(t, r.src.Name).Status.LastSync
	require.NotNil(t, res)
	require.Equal(t, gen, res.Generation, "the sync's end is reported before the agent exits")
	assertNotMounted(t, r.nodeA, r.src.Name)
	return res
}

// afterDestinationRestart: the source's retries may run out while the
// destination restarts; then the next sync must succeed.
func (r *replication) afterDestinationRestart(t *testing.T, gen int64, why string) {
	t.Helper()
	if res := r.synced(t, r.src.Name, gen); !res.Succeeded {
		t.Logf("sync %d failed across %s (%s)", gen, why, res.Error)
		r.nextSucceeds(t, gen, why)
	}
	r.replicaMatches(t)
}

// nextSucceeds asks for one more sync and checks that it ran in full: an
// interrupted sync leaves no record to skip or narrow the next by.
func (r *replication) nextSucceeds(t *testing.T, after int64, why string) {
	t.Helper()
	r.update(t, r.src.Name, func(ma *agentv1alpha1.MountAssignment) { ma.Spec.SyncGeneration = after + 1 })
	res := r.synced(t, r.src.Name, after+1)
	require.True(t, res.Succeeded, "the sync after %s: %s", why, res.Error)
	assert.Equal(t, after+1, res.Generation, "generation %d was not run again", after)
	assert.NotContains(t, res.Summary, "unchanged since the last sync", "an interrupted sync leaves no record: rsync runs in full")
	assert.NotContains(t, res.Summary, sender.IncrementalSummary, "an interrupted sync leaves no record: rsync runs over the whole tree")
}
