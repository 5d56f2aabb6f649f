package controller_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/cycle"
	"github.com/ferrysync/ferry/pkg/controller/destination"
	"github.com/ferrysync/ferry/pkg/controller/snapshot"
	"github.com/ferrysync/ferry/test/cluster"
	"github.com/ferrysync/ferry/test/harness"
)

// faultPair is a Clone source in one cluster replicating into a Snapshot
// destination in the other, for faults in the middle of its syncs.
type faultPair struct {
	src, dst *env
	rdUID    string
	// rounds counts the syncs started, shared by the copies with makes.
	rounds *int
}

// Where the fault scenarios' CRs live.
const (
	faultSrcNS = "fault-src"
	faultDstNS = "fault-dst"
)

// faultCapacity is the destination's size: room for the rounds' files
// (24 MiB each) but not for volumeFull's.
const faultCapacity = "128Mi"

// throttle is what the source cluster's nodes send during the fault
// scenarios: enough to make a round's change take seconds on the wire, so
// that a fault meets the transfer mid-way.
const throttle = "40mbit"

// newFaultPair makes the pair and its first image.
func newFaultPair(src, dst *env) *faultPair {
	t, ctx := src.t, context.Background()
	src.namespace(faultSrcNS, privileged)
	dst.namespace(faultDstNS, privileged)
	rd := dst.destination(faultDstNS, func(rd *volsyncv1alpha1.ReplicationDestination) {
		rd.Spec.Rsync.Capacity = ptr.To(resource.MustParse(faultCapacity))
	})
	keys := dst.secret(faultDstNS, *rd.Status.Rsync.SSHKeys)
	require.NoError(t, src.k.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: faultSrcNS, Name: *rd.Status.Rsync.SSHKeys}, Data: keys}))
	src.claim(faultSrcNS, "data", "1Gi", nil)
	src.onVolume(faultSrcNS, "data", false, func(dir string) { writeApp(t, dir, "0") })
	src.source(faultSrcNS, rd, volsyncv1alpha1.CopyMethodClone, &volsyncv1alpha1.TriggerSpec{Manual: "0"})
	src.synced(faultSrcNS, "rs", "0")
	dst.image(faultDstNS, "rd", "")
	for _, n := range src.c.Nodes {
		require.NoError(t, cluster.Throttle(n.Net, throttle))
	}
	t.Cleanup(func() {
		for _, n := range src.c.Nodes {
			assert.NoError(t, cluster.Throttle(n.Net, ""))
		}
	})
	return &faultPair{src: src, dst: dst, rdUID: string(rd.UID), rounds: new(int)}
}

// round is one sync of the pair: what the source held when it started,
// and the image before it.
type round struct {
	value string
	want  map[string]string
	prev  string
	// dest is the destination's assignment once the source sends data.
	dest *agentv1alpha1.MountAssignment
}

// start changes the source (a new 24 MiB file among the application's),
// starts a sync and returns once the source has sent some of it.
func (p *faultPair) start() *round {
	src, dst := p.src, p.dst
	t := src.t
	*p.rounds++
	r := &round{value: fmt.Sprint(*p.rounds), prev: dst.rd(faultDstNS, "rd").Status.LatestImage.Name}
	src.onVolume(faultSrcNS, "data", false, func(dir string) {
		writeApp(t, dir, r.value)
		harness.WriteRandom(t, filepath.Join(dir, "big-"+r.value), 24<<20)
	})
	r.want = src.tree(faultSrcNS, "data")
	p.trigger(r.value)
	rsUID := string(src.rs(faultSrcNS, "rs").UID)
	testenv.Eventually(t, "the source to send data", 2*time.Minute, func() bool {
		ma := src.assignment(rsUID)
		return ma != nil && ma.Status.CurrentSync != nil && ma.Status.CurrentSync.BytesDone > 1<<20
	})
	r.dest = dst.assignment(p.rdUID)
	require.NotNil(t, r.dest, "the destination's assignment")
	return r
}

// trigger sets the source's manual trigger.
func (p *faultPair) trigger(value string) {
	require.NoError(p.src.t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		rs := p.src.rs(faultSrcNS, "rs")
		rs.Spec.Trigger.Manual = value
		return p.src.k.Update(context.Background(), rs)
	}))
}

// finish checks what the user relies on once a faulted sync is over: it
// completes (retried as it must be), the destination names a new image
// only once it holds the source's tree, the earlier image is gone, and
// nothing of the sync is left on the source's side.
func (p *faultPair) finish(r *round) {
	src, dst := p.src, p.dst
	t := src.t
	src.synced(faultSrcNS, "rs", r.value)
	img := dst.image(faultDstNS, "rd", r.prev)
	assert.Equal(t, r.want, dst.restored(faultDstNS, img), "the new image holds the source's tree")
	p.settled()
}

// settled: the destination keeps one image, and the source's assignment
// and mounts are gone.
func (p *faultPair) settled() {
	t := p.src.t
	testenv.Eventually(t, "one image, the latest", time.Minute, func() bool { return len(p.dst.snapshots(faultDstNS)) == 1 })
	rsUID := string(p.src.rs(faultSrcNS, "rs").UID)
	var left []string
	testenv.Eventually(t, "the source's assignment and mounts gone", time.Minute, func() bool {
		left = left[:0]
		for _, l := range p.src.leftovers(rsUID, "") {
			if !strings.HasPrefix(l, "key copy ") { // kept while the source exists
				left = append(left, l)
			}
		}
		return len(left) == 0
	}, func() string { return fmt.Sprint("left: ", left) })
}

// retrying: the source's current sync is past its first try.
func (p *faultPair) retrying() bool {
	ma := p.src.assignment(string(p.src.rs(faultSrcNS, "rs").UID))
	return ma != nil && ma.Status.CurrentSync != nil && ma.Status.CurrentSync.Attempt > 1
}

// assignment is the assignment of the CR with uid (nil when there is none).
func (e *env) assignment(uid string) *agentv1alpha1.MountAssignment {
	e.t.Helper()
	mas := &agentv1alpha1.MountAssignmentList{}
	if err := e.k.List(context.Background(), mas, client.InNamespace(harness.Namespace)); err != nil {
		return nil // the apiserver may be the fault
	}
	for i := range mas.Items {
		if mas.Items[i].Spec.Owner.UID == uid {
			return &mas.Items[i]
		}
	}
	return nil
}

// node is the node named name.
func (e *env) node(name string) cluster.Node {
	for _, n := range e.c.Nodes {
		if n.Name == name {
			return n
		}
	}
	e.t.Fatalf("no node %s", name)
	return cluster.Node{}
}

// agent is the node agent of the node named name.
func (e *env) agent(name string) *harness.Proc {
	for i, n := range e.c.Nodes {
		if n.Name == name {
			return e.agents[i]
		}
	}
	e.t.Fatalf("no agent on %s", name)
	return nil
}

// apiserverRestarted: the destination cluster's kube-apiserver is killed
// mid-transfer and comes back only after the source has finished: the
// destination's agent cannot report the sync's end when it happens, and
// must report it once it can, so that the image is cut.
func apiserverRestarted(p *faultPair) {
	t := p.src.t
	r := p.start()
	restart, err := p.dst.c.StopAPIServer()
	require.NoError(t, err)
	p.src.synced(faultSrcNS, "rs", r.value)
	require.NoError(t, restart())
	p.finish(r)
}

// networkCut: the destination node's link goes down mid-transfer (no
// reset: the connection stalls) and stays down until the source has given
// up on that try; then it comes back, and a retry completes.
func networkCut(p *faultPair) {
	t := p.src.t
	r := p.start()
	node := p.dst.node(r.dest.Spec.NodeName).Net
	restore, err := cluster.CutLink(node)
	require.NoError(t, err)
	t.Cleanup(func() { _ = restore() }) // the network whole for later tests, whatever happens
	testenv.Eventually(t, "the source to give up on the stalled try", 2*time.Minute, p.retrying)
	require.NoError(t, restore())
	p.finish(r)
}

// agentKilledBeforeSnapshot: the destination's agent is killed (-9) after
// the sync ended but before its image is cut (the snapshotter hangs
// meanwhile), and starts again. The restarted agent keeps the volume held:
// the next sync, started at once with a change, is refused until the image
// is cut, so the image holds the first sync's tree and not the change; the
// next image holds the change.
func agentKilledBeforeSnapshot(p *faultPair) {
	t, dst := p.src.t, p.dst
	r := p.start()
	var resume []func() error
	for _, name := range []string{"csi-snapshotter", "snapshot-controller"} {
		res, err := dst.c.Pause(name)
		require.NoError(t, err)
		resume = append(resume, res)
		t.Cleanup(func() { _ = res() }) // resumed whatever happens
	}
	p.src.synced(faultSrcNS, "rs", r.value)
	var cut string // the image being cut
	testenv.Eventually(t, "the image of the sync to be asked for", time.Minute, func() bool {
		for _, s := range dst.snapshots(faultDstNS) {
			if s.GetName() != r.prev {
				cut = s.GetName()
			}
		}
		return cut != ""
	})
	dst.keepSnapshot(cut)
	agent := dst.agent(r.dest.Spec.NodeName)
	agent.Kill()
	agent.Start()

	p.src.onVolume(faultSrcNS, "data", false, func(dir string) {
		harness.WriteRandom(t, filepath.Join(dir, "after-the-kill"), 1<<20)
	})
	next := p.src.tree(faultSrcNS, "data")
	p.trigger("next")
	testenv.Eventually(t, "the next sync to be refused while the image is cut", 2*time.Minute, p.retrying)
	for _, res := range resume {
		require.NoError(t, res())
	}
	p.src.synced(faultSrcNS, "rs", "next")
	var img string
	testenv.Eventually(t, "the next sync's image", 2*time.Minute, func() bool {
		if li := dst.rd(faultDstNS, "rd").Status.LatestImage; li != nil {
			img = li.Name
		}
		return img != r.prev && img != cut
	})
	assert.Equal(t, r.want, dst.restored(faultDstNS, cut), "the image cut after the kill holds its sync's tree, not the next one's")
	assert.Equal(t, next, dst.restored(faultDstNS, img), "the next image holds the change")
	dst.deleteSnapshot(cut)
	p.settled()
}

// volumeFull: the source gains a file larger than the destination's free
// space. The sync fails on both sides, without retries that would fill
// the volume again; the destination's condition and a SyncFailed event
// name the claim, its size and what the source's volume uses;
// latestImage stays the last complete image. Once the file is gone from
// the source, the retried sync converges.
func volumeFull(p *faultPair) {
	src, dst := p.src, p.dst
	t := src.t
	prev := dst.rd(faultDstNS, "rd").Status.LatestImage.Name
	src.onVolume(faultSrcNS, "data", false, func(dir string) {
		harness.WriteRandom(t, filepath.Join(dir, "huge"), 64<<20)
	})
	*p.rounds++
	value := fmt.Sprint(*p.rounds)
	p.trigger(value)
	const full = "the destination volume is full: claim " + faultDstNS + "/volsync-rd-dst, a filesystem of 1"
	var msg string
	testenv.Eventually(t, "the destination's condition to say the volume is full", 3*time.Minute, func() bool {
		msg = condition(&dst.rd(faultDstNS, "rd").Status.SyncStatus, volsyncv1alpha1.ConditionSynchronizing).Message
		return strings.Contains(msg, full)
	}, func() string { return "condition: " + msg })
	assert.Regexp(t, `a filesystem of 1\d\d\.\d MiB, ran out of space; the source's volume uses \d+\.\d MiB`, msg)
	rd := dst.rd(faultDstNS, "rd")
	assert.True(t, slices.ContainsFunc(dst.events(rd, cycle.EventSyncFailed), func(note string) bool { return strings.Contains(note, full) }),
		"a SyncFailed event says the volume is full: %v", dst.events(rd, cycle.EventSyncFailed))
	assert.Equal(t, prev, rd.Status.LatestImage.Name, "no image of the failed sync")
	testenv.Eventually(t, "the source's sync to fail", time.Minute, func() bool {
		ms := src.rs(faultSrcNS, "rs").Status.LatestMoverStatus
		return ms != nil && ms.Result == volsyncv1alpha1.MoverResultFailed && strings.Contains(ms.Logs, "No space left on device")
	})

	src.onVolume(faultSrcNS, "data", false, func(dir string) {
		require.NoError(t, os.Remove(filepath.Join(dir, "huge")))
	})
	want := src.tree(faultSrcNS, "data")
	src.synced(faultSrcNS, "rs", value)
	img := dst.image(faultDstNS, "rd", prev)
	assert.Equal(t, want, dst.restored(faultDstNS, img), "the image after the volume was full holds the source's tree")
	p.settled()
}

// keepSnapshot labels a VolumeSnapshot for Ferry to keep when a newer image
// replaces it, as a user would.
func (e *env) keepSnapshot(name string) {
	e.t.Helper()
	s := snapshot.New()
	s.SetNamespace(faultDstNS)
	s.SetName(name)
	patch := fmt.Appendf(nil, `{"metadata":{"labels":{%q:"true"}}}`, destination.DoNotDeleteLabel)
	require.NoError(e.t, e.k.Patch(context.Background(), s, client.RawPatch(types.MergePatchType, patch)))
}

// deleteSnapshot deletes a VolumeSnapshot and waits until it is gone.
func (e *env) deleteSnapshot(name string) {
	e.t.Helper()
	s := snapshot.New()
	s.SetNamespace(faultDstNS)
	s.SetName(name)
	require.NoError(e.t, client.IgnoreNotFound(e.k.Delete(context.Background(), s)))
	testenv.Eventually(e.t, "snapshot "+name+" gone", time.Minute, func() bool { return gone(e.k, s) })
}

// with is p for a subtest.
func (p *faultPair) with(t testing.TB) *faultPair {
	c := *p
	c.src, c.dst = p.src.with(t), p.dst.with(t)
	return &c
}

// faults runs the fault scenarios one after the other on one pair, each
// sync after the last one's fault.
func faults(t *testing.T, src, dst *env) {
	p := newFaultPair(src.with(t), dst.with(t))
	for _, s := range []struct {
		name string
		run  func(*faultPair)
	}{
		{"the destination cluster's kube-apiserver killed mid-transfer, back after the source finished", apiserverRestarted},
		{"the destination node's link down mid-transfer until the source gives up the try", networkCut},
		{"the destination's agent killed -9 after the sync, before its image is cut", agentKilledBeforeSnapshot},
		{"the destination volume full mid-file: the condition names claim, size and need; the next sync converges", volumeFull},
	} {
		if !t.Run(s.name, func(t *testing.T) { s.run(p.with(t)) }) {
			return // the pair's state is unknown
		}
	}
}
