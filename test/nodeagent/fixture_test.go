package nodeagent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/csi"
	"github.com/ferrysync/ferry/pkg/mount"
	"github.com/ferrysync/ferry/pkg/transfer/sshkeys"
	"github.com/ferrysync/ferry/test/cluster"
	"github.com/ferrysync/ferry/test/harness"
)

// replication is what TestAgentsReplicate's cases share: the cluster, the
// two agents, the CRs a controller would have made, the source volume and
// the first pair of assignments (src on node A pushing to dst on node B).
// Cases add assignments of their own with add.
type replication struct {
	ctx          context.Context
	c            *cluster.Cluster
	k            client.Client
	nodeA, nodeB cluster.Node
	// agentA runs with one transfer slot, so that a second source queues.
	agentA, agentB *harness.Proc
	rs             *volsyncv1alpha1.ReplicationSource
	rd             *volsyncv1alpha1.ReplicationDestination
	// data is the source PV; work holds the test's own mounts of it.
	data *corev1.PersistentVolume
	work string
	// want is the tree of the last point-in-time copy cut (snapshotOf).
	want map[string]string

	src, dst   *agentv1alpha1.MountAssignment
	ep         *agentv1alpha1.Endpoint
	replicaDir string
	// second and dst2 are the queue case's pair, which the Direct case
	// reuses.
	second, dst2 *agentv1alpha1.MountAssignment
	// made are the assignments created, deleted at the end.
	made []*agentv1alpha1.MountAssignment
	// attachedPV is detached at the end.
	attachedPV *corev1.PersistentVolume
}

// privileged is the annotation that lets namespace "app" keep owners.
var privileged = map[string]string{volsyncv1alpha1.PrivilegedMoversAnnotation: "true"}

// big is a file size at which a transfer is still running when the test
// acts on it, over node A's 400 Mbit/s link.
const big = 128 << 20

// startReplication starts the cluster with node A's link slowed, makes
// what the controller would have (CRs, key Secrets, the source claim with
// a first tree, the replica claim) and starts both agents.
func startReplication(t *testing.T) *replication {
	ctx := context.Background()
	network, err := cluster.NewNetwork("fa", "10.252.0")
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, network.Close()) })
	c, err := cluster.Start(ctx, cluster.Options{Network: network, ServiceCIDR: "10.96.0.0/24", Log: testr.New(t)})
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(c.Logs(60))
		}
		assert.NoError(t, c.Stop())
	})
	r := &replication{ctx: ctx, c: c, k: c.Client, nodeA: c.Nodes[0], nodeB: c.Nodes[1], work: t.TempDir()}
	// A 400 Mbit/s link out of node A, like a modest cluster network: big
	// transfers take seconds, so the test can act in their middle.
	_, err = r.nodeA.Net.Limit("400mbit")
	require.NoError(t, err)
	t.Cleanup(func() {
		// A failed run leaves the agents' mounts: stop the agents and take
		// down what they published, so the cluster can stop cleanly.
		for _, a := range []*harness.Proc{r.agentA, r.agentB} {
			if a != nil {
				_, _ = a.Stop()
			}
		}
		for _, n := range c.Nodes {
			p := csi.NewPublisher(n.KubeletDir, testr.New(t))
			assert.NoError(t, p.Recover(ctx, func(string) bool { return false }))
			_ = p.Close()
		}
	})
	r.createObjects(t)
	// One transfer at a time on node A, so that a second one queues.
	r.agentA, r.agentB = bins.StartAgent(t, c, r.nodeA, "--max-transfers=1"), bins.StartAgent(t, c, r.nodeB)
	return r
}

// createObjects makes the namespaces, CRs, key Secrets and claims, and
// writes the source's first tree.
func (r *replication) createObjects(t *testing.T) {
	k, ctx := r.k, r.ctx
	require.NoError(t, k.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "app", Annotations: privileged}}))
	require.NoError(t, k.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ferryNamespace}}))
	r.rs = &volsyncv1alpha1.ReplicationSource{ObjectMeta: metav1.ObjectMeta{Name: "rs", Namespace: "app"},
		Spec: volsyncv1alpha1.ReplicationSourceSpec{SourcePVC: "data",
			Rsync: &volsyncv1alpha1.ReplicationSourceRsyncSpec{ReplicationSourceVolumeOptions: volsyncv1alpha1.ReplicationSourceVolumeOptions{CopyMethod: volsyncv1alpha1.CopyMethodSnapshot}}}}
	r.rd = &volsyncv1alpha1.ReplicationDestination{ObjectMeta: metav1.ObjectMeta{Name: "rd", Namespace: "app"},
		Spec: volsyncv1alpha1.ReplicationDestinationSpec{Rsync: &volsyncv1alpha1.ReplicationDestinationRsyncSpec{
			ReplicationDestinationVolumeOptions: volsyncv1alpha1.ReplicationDestinationVolumeOptions{CopyMethod: volsyncv1alpha1.CopyMethodSnapshot,
				Capacity: ptr.To(resource.MustParse("1Gi")), AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}}}}}
	require.NoError(t, k.Create(ctx, r.rs))
	require.NoError(t, k.Create(ctx, r.rd))
	dstKeys, srcKeys, err := sshkeys.Secrets()
	require.NoError(t, err)
	require.NoError(t, k.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "rd-keys", Namespace: ferryNamespace}, Data: dstKeys}))
	require.NoError(t, k.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "rs-keys", Namespace: ferryNamespace}, Data: srcKeys}))
	r.data = bound(t, r.c, pvc("app", "data", nil, nil))
	r.writeSource(t, func(dir string) {
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
}

// firstPair creates the destination assignment of a new replica claim on
// node B and, once it is served, the source assignment of a point-in-time
// copy of the source on node A, both at generation 1.
func (r *replication) firstPair(t *testing.T) {
	replica := bound(t, r.c, pvc("app", "replica", nil, r.rd))
	pit := r.snapshotOf(t, "data-pit-1")
	r.dst = r.add(t, &agentv1alpha1.MountAssignment{ObjectMeta: metav1.ObjectMeta{Name: "rd-replica", Namespace: ferryNamespace},
		Spec: agentv1alpha1.MountAssignmentSpec{NodeName: r.nodeB.Name,
			Owner:          agentv1alpha1.OwnerReference{Kind: "ReplicationDestination", Namespace: "app", Name: "rd", UID: string(r.rd.UID)},
			Volume:         volumeOf(replica),
			Destination:    &agentv1alpha1.DestinationRole{KeySecret: agentv1alpha1.SecretReference{Namespace: ferryNamespace, Name: "rd-keys"}, Privileged: true},
			SyncGeneration: 1}})
	r.ep = r.served(t, r.dst.Name)
	require.Equal(t, r.nodeB.Net.IP, r.ep.Address)
	r.replicaDir = r.get(t, r.dst.Name).Status.MountPath
	r.src = r.add(t, &agentv1alpha1.MountAssignment{ObjectMeta: metav1.ObjectMeta{Name: "rs-data", Namespace: ferryNamespace},
		Spec: agentv1alpha1.MountAssignmentSpec{NodeName: r.nodeA.Name,
			Owner:  agentv1alpha1.OwnerReference{Kind: "ReplicationSource", Namespace: "app", Name: "rs", UID: string(r.rs.UID)},
			Volume: volumeOf(pit),
			Source: &agentv1alpha1.SourceRole{Address: r.ep.Address, Port: r.ep.Port, User: "root", Path: "/",
				KeySecret: agentv1alpha1.SecretReference{Namespace: ferryNamespace, Name: "rs-keys"}, Privileged: true},
			SyncGeneration: 1}})
}

// add creates an assignment, to be deleted at the end, and returns it.
func (r *replication) add(t *testing.T, ma *agentv1alpha1.MountAssignment) *agentv1alpha1.MountAssignment {
	t.Helper()
	require.NoError(t, r.k.Create(r.ctx, ma))
	r.made = append(r.made, ma)
	return ma
}

// like is a copy of an assignment's spec under another name, for a case's
// own assignment.
func like(ma *agentv1alpha1.MountAssignment, name string) *agentv1alpha1.MountAssignment {
	return &agentv1alpha1.MountAssignment{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ferryNamespace}, Spec: *ma.Spec.DeepCopy()}
}

// writeSource mounts the source volume on node A read-write for fn.
func (r *replication) writeSource(t *testing.T, fn func(dir string)) {
	t.Helper()
	dir, unmount, err := cluster.MountVolume(r.ctx, r.nodeA.Volume(cluster.DriverName, r.data.Spec.CSI.VolumeHandle), r.work)
	require.NoError(t, err)
	fn(dir)
	require.NoError(t, unmount())
}

// snapshotOf records the source's tree as want and returns the PV of a
// point-in-time copy of it, restored from a VolumeSnapshot as copyMethod
// Snapshot makes it.
func (r *replication) snapshotOf(t *testing.T, name string) *corev1.PersistentVolume {
	t.Helper()
	m := r.nodeA.Volume(cluster.DriverName, r.data.Spec.CSI.VolumeHandle)
	m.ReadOnly = true
	dir, unmount, err := cluster.MountVolume(r.ctx, m, r.work)
	require.NoError(t, err)
	r.want = harness.Tree(t, dir)
	require.NoError(t, unmount())
	return snapshotClaim(t, r.c, "app", "data", name, r.rs)
}

// get reads an assignment.
func (r *replication) get(t *testing.T, name string) *agentv1alpha1.MountAssignment {
	t.Helper()
	ma := &agentv1alpha1.MountAssignment{}
	require.NoError(t, r.k.Get(r.ctx, client.ObjectKey{Namespace: ferryNamespace, Name: name}, ma))
	return ma
}

// update changes an assignment's spec as the controller would: on a
// fresh read, again if the agent wrote its status in between (a CI run
// lost that race once).
func (r *replication) update(t *testing.T, name string, fn func(*agentv1alpha1.MountAssignment)) {
	t.Helper()
	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		ma := r.get(t, name)
		fn(ma)
		return r.k.Update(r.ctx, ma)
	}))
}

// synced waits until an assignment reports sync gen (or a later one) and
// returns the result.
func (r *replication) synced(t *testing.T, name string, gen int64) *agentv1alpha1.SyncResult {
	t.Helper()
	var last *agentv1alpha1.SyncResult
	testenv.Eventually(t, name+" to report sync "+strconv.FormatInt(gen, 10), 2*time.Minute, func() bool {
		last = r.get(t, name).Status.LastSync
		return last != nil && last.Generation >= gen
	})
	return last
}

// served waits until a destination assignment is served and returns where.
func (r *replication) served(t *testing.T, name string) *agentv1alpha1.Endpoint {
	t.Helper()
	var ep *agentv1alpha1.Endpoint
	testenv.Eventually(t, name+" to be served", time.Minute, func() bool {
		ma := r.get(t, name)
		ep = ma.Status.Endpoint
		return ma.Status.Phase == agentv1alpha1.PhaseMounted && ep != nil
	})
	return ep
}

// release moves a holding destination to its next generation, as the
// controller does once it has its snapshot, and waits until it accepts
// syncs again.
func (r *replication) release(t *testing.T, name string) {
	t.Helper()
	r.update(t, name, func(ma *agentv1alpha1.MountAssignment) { ma.Spec.SyncGeneration++ })
	testenv.Eventually(t, name+" to be released", time.Minute, func() bool {
		return r.get(t, name).Status.Phase == agentv1alpha1.PhaseMounted
	})
}

// nextSync points the source at a volume for its next generation and
// returns that generation.
func (r *replication) nextSync(t *testing.T, v *corev1.PersistentVolume) int64 {
	t.Helper()
	gen := r.get(t, r.src.Name).Spec.SyncGeneration + 1
	r.update(t, r.src.Name, func(ma *agentv1alpha1.MountAssignment) { ma.Spec.Volume, ma.Spec.SyncGeneration = volumeOf(v), gen })
	return gen
}

// bigSyncUnderWay replaces the source's big file with a new one (big-n),
// cuts a point-in-time copy, releases the destination, asks for the next
// sync of the copy and returns its generation once it is sending (and far
// from done).
func (r *replication) bigSyncUnderWay(t *testing.T, n int) int64 {
	t.Helper()
	r.writeSource(t, func(dir string) {
		_ = os.Remove(filepath.Join(dir, fmt.Sprintf("big-%d", n-1)))
		harness.WriteRandom(t, filepath.Join(dir, fmt.Sprintf("big-%d", n)), big)
	})
	copyPV := r.snapshotOf(t, fmt.Sprintf("data-big-%d", n))
	r.release(t, r.dst.Name)
	gen := r.nextSync(t, copyPV)
	var cs *agentv1alpha1.SyncProgress
	testenv.Eventually(t, "the transfer to be under way", time.Minute, func() bool {
		cs = r.get(t, r.src.Name).Status.CurrentSync
		return cs != nil && cs.Generation == gen && cs.BytesDone > 0
	})
	require.Less(t, cs.BytesDone, int64(big/2), "still early in the transfer")
	return gen
}

// replicaMatches checks that the destination's last sync succeeded and the
// replica holds the last copy's tree.
func (r *replication) replicaMatches(t *testing.T) {
	t.Helper()
	require.True(t, r.get(t, r.dst.Name).Status.LastSync.Succeeded)
	assert.Equal(t, r.want, harness.Tree(t, r.replicaDir))
}

// assertNotMounted checks that nothing of an assignment is mounted on the
// node.
func assertNotMounted(t *testing.T, n cluster.Node, name string) {
	t.Helper()
	mounts, err := mount.Under(filepath.Join(csi.DefaultRoot(n.KubeletDir), name))
	require.NoError(t, err)
	assert.Empty(t, mounts, "%s still mounted on %s", name, n.Name)
}
