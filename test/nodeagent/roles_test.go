package nodeagent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/assign"
	"github.com/ferrysync/ferry/pkg/csi"
	"github.com/ferrysync/ferry/pkg/mount"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
	"github.com/ferrysync/ferry/test/cluster"
	"github.com/ferrysync/ferry/test/harness"
)

// newDestination creates a destination assignment like the first one for a
// new replica claim and returns it.
func (r *replication) newDestination(t *testing.T, name string, claim *corev1.PersistentVolumeClaim) *agentv1alpha1.MountAssignment {
	t.Helper()
	ma := like(r.dst, name)
	ma.Spec.Volume, ma.Spec.SyncGeneration = volumeOf(bound(t, r.c, claim)), 1
	return r.add(t, ma)
}

// queue: with one transfer slot on node A, a second source waits, Queued,
// while the first sends, then runs.
func (r *replication) queue(t *testing.T) {
	r.dst2 = r.newDestination(t, "rd-replica-2", pvc("app", "replica-2", nil, r.rd))
	ep2 := r.served(t, r.dst2.Name)
	gen := r.bigSyncUnderWay(t, 7)
	r.second = like(r.get(t, r.src.Name), "rs-data-2")
	r.second.Spec.Source.Port, r.second.Spec.SyncGeneration = ep2.Port, 1
	r.add(t, r.second)
	testenv.Eventually(t, "the second source to queue", time.Minute, func() bool {
		return r.get(t, r.second.Name).Status.Phase == agentv1alpha1.PhaseQueued
	})
	// The gauge counts it while it waits: read while the first still sends
	// (so the second cannot have its slot yet).
	queued := r.agentA.Metric("ferry_agent_queued_transfers", map[string]string{"node": r.nodeA.Name})
	require.NotNil(t, r.get(t, r.src.Name).Status.CurrentSync, "the first transfer still runs after the gauge was read")
	assert.Equal(t, 1.0, queued, "one source waits for a slot")
	first := r.synced(t, r.src.Name, gen)
	require.True(t, first.Succeeded)
	after := r.synced(t, r.second.Name, 1)
	require.True(t, after.Succeeded, "the queued one runs after")
	assert.False(t, after.StartTime.Before(first.EndTime), "it started once the first had ended")
	assert.Equal(t, r.want, harness.Tree(t, r.get(t, r.dst2.Name).Status.MountPath))
}

// direct: copyMethod Direct with a pod on node A using the source PVC: the
// agent binds kubelet's mount of it read-only instead of staging the
// volume again, pushes, and leaves the pod's mount alone.
func (r *replication) direct(t *testing.T) {
	require.NotNil(t, r.dst2, "the queue case made the destination")
	podMount := filepath.Join(r.nodeA.KubeletDir, "pods", "4a5b6c7d-pod", "volumes", "kubernetes.io~csi", r.data.Name, "mount")
	pod := r.nodeA.Volume(cluster.DriverName, r.data.Spec.CSI.VolumeHandle)
	pod.AsPod = true
	unmountPod, err := pod.At(r.ctx, podMount)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(podMount, "written-by-the-pod"), []byte("live data"), 0o644))
	wantDirect := harness.Tree(t, podMount)
	r.release(t, r.dst2.Name)
	direct := like(r.get(t, r.second.Name), "rs-direct")
	direct.Spec.Volume, direct.Spec.SyncGeneration = volumeOf(r.data), 1
	direct.Spec.Volume.ReuseKubeletMount = true
	r.add(t, direct)
	require.True(t, r.synced(t, direct.Name, 1).Succeeded)
	assert.Equal(t, wantDirect, harness.Tree(t, r.get(t, r.dst2.Name).Status.MountPath), "the replica has what the pod sees")
	mounted, err := mount.IsMountPoint(podMount)
	require.NoError(t, err)
	assert.True(t, mounted, "the pod's mount stays")
	assertNotMounted(t, r.nodeA, direct.Name)
	require.NoError(t, unmountPod())
	assert.Contains(t, r.agentA.Logs(), `"mount":"`+podMount+`"`, "published by binding kubelet's mount")
}

// unprivileged: whoever can write assignments (a compromised controller,
// or another node's agent) cannot grant what the namespace does not: the
// agent reads the annotation itself, and the replica is the ordinary
// user's, without setuid, setgid or devices.
func (r *replication) unprivileged(t *testing.T) {
	setAnnotations := func(a map[string]string) {
		ns := &corev1.Namespace{}
		require.NoError(t, r.k.Get(r.ctx, client.ObjectKey{Name: "app"}, ns))
		ns.Annotations = a
		require.NoError(t, r.k.Update(r.ctx, ns))
	}
	setAnnotations(nil)
	defer setAnnotations(privileged)
	dst := r.newDestination(t, "rd-replica-unprivileged", pvc("app", "replica-unprivileged", nil, r.rd))
	require.True(t, dst.Spec.Destination.Privileged, "the assignment claims privileged")
	ep := r.served(t, dst.Name)
	src := like(r.src, "rs-unprivileged")
	src.Spec.Source.Port, src.Spec.SyncGeneration = ep.Port, 1
	r.add(t, src)
	res := r.synced(t, src.Name, 1)
	require.True(t, res.Succeeded, res.Error)
	dir := r.get(t, dst.Name).Status.MountPath
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
}

// attachRequired: a destination whose driver requires attach waits for
// the controller's attachment, then serves; detached (its disk taken off
// the node: a sync into it then fails) and attached again (a new attachment
// UID), it is published anew with its data.
func (r *replication) attachRequired(t *testing.T) {
	claim := pvc("app", "replica-attached", nil, r.rd)
	claim.Spec.StorageClassName = ptr.To(cluster.AttachStorageClass)
	dst := like(r.dst, "rd-replica-attached")
	r.attachedPV = bound(t, r.c, claim)
	dst.Spec.Volume = volumeOf(r.attachedPV)
	r.add(t, dst)
	testenv.Eventually(t, "the destination to wait for its attachment", time.Minute, func() bool {
		cond := meta.FindStatusCondition(r.get(t, dst.Name).Status.Conditions, agentv1alpha1.ConditionReady)
		return cond != nil && cond.Reason == agentv1alpha1.ReasonWaitingForAttach
	})
	attach := func(t *testing.T) {
		t.Helper()
		a := harness.Attached(t, r.k, dst.Spec.Volume, r.nodeB.Name)
		r.update(t, dst.Name, func(ma *agentv1alpha1.MountAssignment) { ma.Spec.Volume.Attachment = a })
		testenv.Eventually(t, "the attached destination to be served", time.Minute, func() bool {
			ma := r.get(t, dst.Name)
			return ma.Status.Phase == agentv1alpha1.PhaseMounted && ma.Status.ObservedGeneration == ma.Generation
		})
	}
	attach(t)
	attachedDir := r.get(t, dst.Name).Status.MountPath
	// Written through to the disk, as a sync's end syncs it: the detach
	// takes the disk off the node (the ebs profile revokes the device).
	require.NoError(t, os.WriteFile(filepath.Join(attachedDir, "kept"), []byte("across a re-attach"), 0o600))
	require.NoError(t, syncFS(attachedDir))
	require.NoError(t, assign.Detach(context.Background(), r.k, r.attachedPV.Name))
	// The disk is off the node under the served destination: a source that
	// pushes now fails, and never reports success.
	pulled := like(r.get(t, r.src.Name), "rs-into-pulled")
	pulled.Spec.Source.Port, pulled.Spec.SyncGeneration = r.served(t, dst.Name).Port, 1
	r.add(t, pulled)
	res := r.synced(t, pulled.Name, 1)
	assert.False(t, res.Succeeded, "a sync into a volume whose disk is gone")
	testenv.Eventually(t, "the destination to say why the sync failed", time.Minute, func() bool {
		last := r.get(t, dst.Name).Status.LastSync
		return last != nil && !last.Succeeded && strings.Contains(last.Error, "the destination volume failed under the sync") &&
			strings.Contains(last.Error, "its disk failed, or was detached from the node")
	}, func() string { return fmt.Sprintf("last sync: %+v", r.get(t, dst.Name).Status.LastSync) })
	attach(t)
	got, err := os.ReadFile(filepath.Join(r.get(t, dst.Name).Status.MountPath, "kept"))
	require.NoError(t, err)
	assert.Equal(t, "across a re-attach", string(got))
	record, err := os.ReadFile(filepath.Join(csi.DefaultRoot(r.nodeB.KubeletDir), dst.Name, "volume.json"))
	require.NoError(t, err)
	assert.Contains(t, string(record), r.get(t, dst.Name).Spec.Volume.Attachment.UID, "published anew for the new attachment")
}
