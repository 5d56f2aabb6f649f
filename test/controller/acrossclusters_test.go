package controller_test

import (
	"context"
	"os"
	"strings"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/fstree"
	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/internal/volsyncmover"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/transfer/sshkeys"
)

// privileged is the annotation of a namespace whose transfers keep owners,
// setuid bits and devices: the fidelity set needs them.
var privileged = map[string]string{volsyncv1alpha1.PrivilegedMoversAnnotation: "true"}

// fidelity fills a claim with the fidelity set (hard links, ACLs, owners,
// sparse files, symlinks, a FIFO, long and odd names) and returns it as
// read back.
func (e *env) fidelity(ns, claim string) map[string]fstree.Entry {
	e.t.Helper()
	e.onVolume(ns, claim, false, func(dir string) { require.NoError(e.t, fstree.Build(dir)) })
	return e.entries(ns, claim)
}

// entries reads a claim's tree for fstree.Diff, without the mkfs
// lost+found a fresh volume has.
func (e *env) entries(ns, claim string) map[string]fstree.Entry {
	e.t.Helper()
	var out map[string]fstree.Entry
	e.onVolume(ns, claim, true, func(dir string) {
		var err error
		out, err = fstree.Snapshot(dir)
		require.NoError(e.t, err)
	})
	withoutLostFound(out)
	return out
}

func withoutLostFound(tree map[string]fstree.Entry) {
	delete(tree, "lost+found")
	delete(tree, ".") // the volume root's own mode and owner are the provisioner's
}

// restoredEntries restores a snapshot into a new claim and reads it.
func (e *env) restoredEntries(ns, snapshot string) map[string]fstree.Entry {
	var out map[string]fstree.Entry
	e.withRestored(ns, snapshot, func(claim string) { out = e.entries(ns, claim) })
	return out
}

// destination creates a Snapshot ReplicationDestination "rd" with
// generated keys (mods change it first) and waits for its address; it
// returns the CR.
func (e *env) destination(ns string, mods ...func(*volsyncv1alpha1.ReplicationDestination)) *volsyncv1alpha1.ReplicationDestination {
	e.t.Helper()
	rd := &volsyncv1alpha1.ReplicationDestination{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "rd"},
		Spec: volsyncv1alpha1.ReplicationDestinationSpec{Rsync: &volsyncv1alpha1.ReplicationDestinationRsyncSpec{
			ReplicationDestinationVolumeOptions: volsyncv1alpha1.ReplicationDestinationVolumeOptions{CopyMethod: volsyncv1alpha1.CopyMethodSnapshot,
				Capacity: ptr.To(resource.MustParse("1Gi")), AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}}}}}
	for _, mod := range mods {
		mod(rd)
	}
	require.NoError(e.t, e.k.Create(context.Background(), rd))
	generated := rd.Spec.Rsync.SSHKeys == nil
	testenv.Eventually(e.t, "the destination's address", time.Minute, func() bool {
		rd = e.rd(ns, "rd")
		return rd.Status.Rsync != nil && rd.Status.Rsync.Address != nil && (rd.Status.Rsync.SSHKeys != nil || !generated)
	})
	return rd
}

// secret reads a Secret's data.
func (e *env) secret(ns, name string) map[string][]byte {
	e.t.Helper()
	s := &corev1.Secret{}
	require.NoError(e.t, e.k.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, s))
	return s.Data
}

// volsyncSourceIntoFerry: VolSync's own source — stock OpenSSH and rsync
// invoked as its mover invokes them, from a node of the other cluster —
// pushes the fidelity set through a Ferry ReplicationDestination's Service
// with the Secret Ferry generated, and ends the sync with `shutdown 0`;
// Ferry cuts the image, which holds exactly what was sent.
func volsyncSourceIntoFerry(src, dst *env) {
	t := src.t
	dst.namespace("vs-dst", privileged)
	rd := dst.destination("vs-dst")
	data := t.TempDir()
	require.NoError(t, fstree.Build(data))
	want, err := fstree.Snapshot(data)
	require.NoError(t, err)
	withoutLostFound(want)

	short, err := os.MkdirTemp("/tmp", "vs") // the ControlMaster socket's path must stay short
	require.NoError(t, err)
	defer os.RemoveAll(short)
	s, err := volsyncmover.NewSource(short, dst.secret("vs-dst", *rd.Status.Rsync.SSHKeys), *rd.Status.Rsync.Address, 22)
	require.NoError(t, err)
	s.Prefix = []string{"ip", "netns", "exec", src.c.Nodes[0].Net.Namespace}
	defer s.Close()
	ctx := context.Background()
	out, err := s.Rsync(ctx, data)
	t.Logf("VolSync's rsync:\n%s", out)
	require.NoError(t, err)
	_, err = s.Shutdown(ctx, 0)
	require.NoError(t, err)

	img := dst.image("vs-dst", "rd", "")
	assert.Empty(t, fstree.Diff(want, dst.restoredEntries("vs-dst", img)), "the image holds what VolSync's source sent")
	rd = dst.rd("vs-dst", "rd")
	require.NotNil(t, rd.Status.LastSyncTime)
	assert.Equal(t, volsyncv1alpha1.MoverResultSuccessful, rd.Status.LatestMoverStatus.Result)
}

// ferryIntoVolSync: a Ferry ReplicationSource (copyMethod Snapshot) pushes
// the fidelity set into VolSync's own destination — stock sshd with the
// source's key forced to rrsync on the volume, as its mover sets it up —
// on the host, through the node network, and ends the sync with
// `shutdown 0`.
func ferryIntoVolSync(e *env) {
	t, k, ctx := e.t, e.k, context.Background()
	dstKeys, srcKeys, err := sshkeys.Secrets()
	require.NoError(t, err)
	volume := t.TempDir()
	d, err := volsyncmover.StartDestination(t.TempDir(), dstKeys, volume, network.HostIP()+":0", func(s string) { t.Log(s) })
	require.NoError(t, err)
	defer d.Stop()

	e.namespace("vs-src", privileged)
	e.claim("vs-src", "data", "1Gi", nil)
	want := e.fidelity("vs-src", "data")
	require.NoError(t, k.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "vs-src", Name: "volsync-keys"}, Data: srcKeys}))
	rs := &volsyncv1alpha1.ReplicationSource{ObjectMeta: metav1.ObjectMeta{Namespace: "vs-src", Name: "rs"},
		Spec: volsyncv1alpha1.ReplicationSourceSpec{SourcePVC: "data", Trigger: &volsyncv1alpha1.TriggerSpec{Manual: "1"},
			Rsync: &volsyncv1alpha1.ReplicationSourceRsyncSpec{ReplicationSourceVolumeOptions: volsyncv1alpha1.ReplicationSourceVolumeOptions{CopyMethod: volsyncv1alpha1.CopyMethodSnapshot},
				SSHKeys: ptr.To("volsync-keys"), Address: ptr.To(network.HostIP()), Port: ptr.To(int32(d.Port))}}}
	require.NoError(t, k.Create(ctx, rs))
	e.synced("vs-src", "rs", "1")

	got, err := fstree.Snapshot(volume)
	require.NoError(t, err)
	withoutLostFound(got)
	// rrsync from rsync 3.5 on drops devices and specials (--drop-D).
	delete(want, "fifo")
	assert.Empty(t, fstree.Diff(want, got), "VolSync's destination holds the source's data")
	assert.Equal(t, "0", d.Shutdown(), "the sync ends with shutdown 0")
}

// snapshotIntoDirect: a Snapshot source in one cluster into a Direct
// destination (a claim the user made) in the other, behind a LoadBalancer
// Service whose address the test hands out as a cloud's controller would;
// the key Secret is copied across as the spec says. The replica holds the
// fidelity set.
func snapshotIntoDirect(src, dst *env) {
	t, ctx := src.t, context.Background()
	dst.namespace("x-dst", privileged)
	src.namespace("x-src", privileged)
	dst.claim("x-dst", "replica", "1Gi", nil)
	rd := &volsyncv1alpha1.ReplicationDestination{ObjectMeta: metav1.ObjectMeta{Namespace: "x-dst", Name: "rd"},
		Spec: volsyncv1alpha1.ReplicationDestinationSpec{Rsync: &volsyncv1alpha1.ReplicationDestinationRsyncSpec{
			ReplicationDestinationVolumeOptions: volsyncv1alpha1.ReplicationDestinationVolumeOptions{CopyMethod: volsyncv1alpha1.CopyMethodDirect,
				DestinationPVC: ptr.To("replica")},
			ServiceType: ptr.To(corev1.ServiceTypeLoadBalancer)}}}
	require.NoError(t, dst.k.Create(ctx, rd))
	svc := &corev1.Service{}
	testenv.Eventually(t, "the LoadBalancer Service", time.Minute, func() bool {
		return dst.k.Get(ctx, client.ObjectKey{Namespace: "x-dst", Name: "volsync-rsync-dst-rd"}, svc) == nil
	})
	dst.loadBalance(svc, remoteLBIP)
	testenv.Eventually(t, "the load balancer's address and the keys in status", time.Minute, func() bool {
		rd = dst.rd("x-dst", "rd")
		return rd.Status.Rsync != nil && rd.Status.Rsync.Address != nil && rd.Status.Rsync.SSHKeys != nil
	})
	require.Equal(t, remoteLBIP, *rd.Status.Rsync.Address)
	// The spec's "Copying the SSH key secret", by the client.
	keys := dst.secret("x-dst", *rd.Status.Rsync.SSHKeys)
	require.NoError(t, src.k.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "x-src", Name: *rd.Status.Rsync.SSHKeys}, Data: keys}))

	src.claim("x-src", "data", "1Gi", nil)
	want := src.fidelity("x-src", "data")
	rs := &volsyncv1alpha1.ReplicationSource{ObjectMeta: metav1.ObjectMeta{Namespace: "x-src", Name: "rs"},
		Spec: volsyncv1alpha1.ReplicationSourceSpec{SourcePVC: "data", Trigger: &volsyncv1alpha1.TriggerSpec{Manual: "1"},
			Rsync: &volsyncv1alpha1.ReplicationSourceRsyncSpec{ReplicationSourceVolumeOptions: volsyncv1alpha1.ReplicationSourceVolumeOptions{CopyMethod: volsyncv1alpha1.CopyMethodSnapshot},
				SSHKeys: rd.Status.Rsync.SSHKeys, Address: rd.Status.Rsync.Address}}}
	require.NoError(t, src.k.Create(ctx, rs))
	src.synced("x-src", "rs", "1")
	testenv.Eventually(t, "the destination to record the sync", time.Minute, func() bool {
		return dst.rd("x-dst", "rd").Status.LastSyncTime != nil
	})
	assert.Equal(t, "replica", dst.rd("x-dst", "rd").Status.LatestImage.Name, "Direct: the image is the claim")
	dst.pause("x-dst", "rd")
	assert.Empty(t, fstree.Diff(want, dst.entries("x-dst", "replica")), "the replica holds the fidelity set")
}

// loadBalance plays the cloud's load-balancer controller: it gives a
// LoadBalancer Service its ingress address (on the Service's latest
// version: the controller writes it too).
func (e *env) loadBalance(svc *corev1.Service, ip string) {
	e.t.Helper()
	require.NoError(e.t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := e.k.Get(context.Background(), client.ObjectKeyFromObject(svc), svc); err != nil {
			return err
		}
		svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: ip}}
		return e.k.Status().Update(context.Background(), svc)
	}))
}

// pause pauses a destination and waits until Ferry has let go of its
// volume, so that the test may mount it.
func (e *env) pause(ns, name string) {
	e.t.Helper()
	require.NoError(e.t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		rd := e.rd(ns, name)
		rd.Spec.Paused = true
		return e.k.Update(context.Background(), rd)
	}))
	uid := string(e.rd(ns, name).UID)
	testenv.Eventually(e.t, "the paused destination's volume to be released", time.Minute, func() bool {
		return !e.assigned(uid)
	})
}

// assigned says whether Ferry holds an assignment for the CR with uid.
func (e *env) assigned(uid string) bool {
	e.t.Helper()
	for _, l := range e.leftovers(uid, "") {
		if strings.HasPrefix(l, "assignment ") {
			return true
		}
	}
	return false
}
