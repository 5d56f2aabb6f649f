// Package controller_test drives Ferry end to end through its CRs only: a
// cluster on this machine (real apiserver, kube-controller-manager, CSI
// driver and sidecars, kube-proxy in two simulated nodes' network
// namespaces), a node agent on each node and the controller, all as
// processes with the RBAC deploy/ ships. Tests write ReplicationSources and
// ReplicationDestinations (the spec's examples where they fit) and check
// what a user checks: status, events, and the bytes on a volume restored
// from latestImage.
package controller_test

import (
	"github.com/ferrysync/ferry/pkg/controller/assign"

	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/csi"
	"github.com/ferrysync/ferry/test/cluster"
	"github.com/ferrysync/ferry/test/harness"
)

var (
	bins    *harness.Binaries
	network *cluster.Network
	// shared is the cluster most scenarios run in; remote is a second
	// one, joined to it on the node network, for scenarios across clusters.
	shared, remote *cluster.Cluster
)

// lbCIDR and remoteLBCIDR are where the test, playing the cloud's
// load-balancer controller, takes ingress addresses from in each cluster.
const (
	lbCIDR       = "10.99.0.0/24"
	remoteLBCIDR = "10.98.0.0/24"
	remoteLBIP   = "10.98.0.10"
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) (code int) {
	flag.Parse()
	if testing.Short() {
		return m.Run() // the tests skip; nothing to start
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "test/controller needs root (mounts, network namespaces): run make test as root, or make test-unit")
		return 1
	}
	var err error
	if bins, err = harness.Build(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer bins.Remove()
	if network, err = cluster.NewNetwork("fk", "10.253.0"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer network.Close()
	if shared, err = cluster.Start(context.Background(), cluster.Options{Network: network, ServiceCIDR: "10.96.0.0/22",
		LoadBalancerCIDR: lbCIDR, Profiles: profiles, Log: logr.Discard()}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		if !stop(shared) {
			code = 1
		}
	}()
	if remote, err = cluster.Start(context.Background(), cluster.Options{Network: network, ServiceCIDR: "10.97.0.0/22",
		LoadBalancerCIDR: remoteLBCIDR, Nodes: []string{"remote-node-a", "remote-node-b"}, Log: logr.Discard()}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		if !stop(remote) {
			code = 1
		}
	}()
	if err := cluster.Connect(shared, remote); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// stop takes down whatever a failed test left mounted, then the cluster;
// it says whether all went well.
func stop(c *cluster.Cluster) bool {
	ok := true
	for _, n := range c.Nodes {
		p := csi.NewPublisher(n.KubeletDir, logr.Discard())
		if err := p.Recover(context.Background(), func(string) bool { return false }); err != nil {
			fmt.Fprintln(os.Stderr, "take down volumes:", err)
			ok = false
		}
		_ = p.Close()
	}
	if err := c.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stop cluster:", err)
		ok = false
	}
	return ok
}

// env is the shared cluster with Ferry running on it.
type env struct {
	t    testing.TB
	c    *cluster.Cluster
	k    client.Client
	ctrl *harness.Proc
	// agents are the node agents, one per node.
	agents []*harness.Proc
	work   string
}

// setup starts the agents on both nodes of c and its controller, whose
// metrics listen on port; they stop when the test ends, so scenarios share
// them as subtests of one test.
func setup(t testing.TB, c *cluster.Cluster, port int) *env {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a cluster; runs in make test")
	}
	k := c.Client
	require.NoError(t, k.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: harness.Namespace}}))
	e := &env{t: t, c: c, k: k, work: t.TempDir()}
	for _, n := range c.Nodes {
		e.agents = append(e.agents, bins.StartAgent(t, c, n))
	}
	e.ctrl = bins.StartController(t, c, port)
	// Runs before the controller and agents stop (cleanups run last
	// first): every CR goes the way a user deletes it, and with it every
	// assignment, so no volume stays mounted.
	t.Cleanup(func() {
		ctx := context.Background()
		for _, list := range []client.ObjectList{&volsyncv1alpha1.ReplicationSourceList{}, &volsyncv1alpha1.ReplicationDestinationList{}} {
			require.NoError(t, k.List(ctx, list))
			require.NoError(t, meta.EachListItem(list, func(o runtime.Object) error {
				return client.IgnoreNotFound(k.Delete(ctx, o.(client.Object)))
			}))
		}
		testenv.Eventually(t, "every assignment to be gone after its CR", 2*time.Minute, func() bool {
			mas := &agentv1alpha1.MountAssignmentList{}
			require.NoError(t, k.List(ctx, mas, client.InNamespace(harness.Namespace)))
			return len(mas.Items) == 0
		})
		if t.Failed() {
			t.Log(c.Logs(80))
		}
	})
	return e
}

// with is e for a subtest.
func (e *env) with(t testing.TB) *env {
	c := *e
	c.t = t
	return &c
}

// namespace creates a namespace for one scenario, with annotations.
func (e *env) namespace(name string, annotations map[string]string) {
	e.t.Helper()
	require.NoError(e.t, e.k.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations}}))
}

// claim creates a PVC of size in ns and waits until it is bound.
func (e *env) claim(ns, name, size string, source *corev1.TypedLocalObjectReference) *corev1.PersistentVolume {
	e.t.Helper()
	pv, err := e.c.Bind(context.Background(), claimOf(ns, name, size, source))
	require.NoError(e.t, err)
	return pv
}

// claimOf is a claim of the test driver's class.
func claimOf(ns, name, size string, source *corev1.TypedLocalObjectReference) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To(cluster.StorageClass),
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}},
			DataSource:       source,
		},
	}
}

// onVolume mounts a bound claim's volume on the host through the first
// node's plugin (read-only when asked), runs fn on it and unmounts it.
func (e *env) onVolume(ns, claim string, readOnly bool, fn func(dir string)) {
	e.t.Helper()
	harness.OnVolume(e.t, e.c, ns, claim, e.work, readOnly, fn)
}

// tree describes a claim's data as a replica must reproduce it.
func (e *env) tree(ns, claim string) map[string]string {
	var out map[string]string
	e.onVolume(ns, claim, true, func(dir string) { out = harness.Tree(e.t, dir) })
	return out
}

// restored restores a snapshot into a new claim and describes its data:
// what a user recovering from latestImage gets.
func (e *env) restored(ns, snapshot string) map[string]string {
	var out map[string]string
	e.withRestored(ns, snapshot, func(claim string) { out = e.tree(ns, claim) })
	return out
}

// withRestored restores a snapshot into a new claim, runs fn with the
// claim's name and deletes the claim.
func (e *env) withRestored(ns, snapshot string, fn func(claim string)) {
	e.t.Helper()
	name := "restore-" + snapshot
	e.claim(ns, name, "2Gi", &corev1.TypedLocalObjectReference{APIGroup: ptr.To("snapshot.storage.k8s.io"), Kind: "VolumeSnapshot", Name: snapshot})
	defer func() {
		require.NoError(e.t, e.k.Delete(context.Background(), &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}))
	}()
	fn(name)
}

func (e *env) rs(ns, name string) *volsyncv1alpha1.ReplicationSource {
	e.t.Helper()
	rs := &volsyncv1alpha1.ReplicationSource{}
	require.NoError(e.t, e.k.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, rs))
	return rs
}

func (e *env) rd(ns, name string) *volsyncv1alpha1.ReplicationDestination {
	e.t.Helper()
	rd := &volsyncv1alpha1.ReplicationDestination{}
	require.NoError(e.t, e.k.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, rd))
	return rd
}

// trigger sets a source's manual trigger and waits until its sync has
// completed (lastManualSync echoes it); it returns the source then.
func (e *env) trigger(ns, name, value string) *volsyncv1alpha1.ReplicationSource {
	e.t.Helper()
	require.NoError(e.t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		rs := e.rs(ns, name)
		if rs.Spec.Trigger == nil {
			rs.Spec.Trigger = &volsyncv1alpha1.TriggerSpec{}
		}
		rs.Spec.Trigger.Manual = value
		return e.k.Update(context.Background(), rs)
	}))
	return e.synced(ns, name, value)
}

// synced waits until the source's manual sync value completed, failing
// early with the status when it fails.
func (e *env) synced(ns, name, value string) *volsyncv1alpha1.ReplicationSource {
	e.t.Helper()
	var rs *volsyncv1alpha1.ReplicationSource
	testenv.Eventually(e.t, fmt.Sprintf("ReplicationSource %s/%s to complete manual sync %q", ns, name, value), 3*time.Minute, func() bool {
		rs = e.rs(ns, name)
		return rs.Status.LastManualSync == value
	})
	require.Equal(e.t, volsyncv1alpha1.MoverResultSuccessful, rs.Status.LatestMoverStatus.Result, rs.Status.LatestMoverStatus.Logs)
	return rs
}

// image waits until the destination's latestImage is other than prev and
// returns it.
func (e *env) image(ns, name, prev string) string {
	e.t.Helper()
	var img string
	testenv.Eventually(e.t, fmt.Sprintf("ReplicationDestination %s/%s to name a new image", ns, name), 2*time.Minute, func() bool {
		rd := e.rd(ns, name)
		if rd.Status.LatestImage != nil {
			img = rd.Status.LatestImage.Name
		}
		return img != "" && img != prev
	})
	return img
}

// condition returns a CR's condition of type.
func condition(st *volsyncv1alpha1.SyncStatus, typ string) metav1.Condition {
	for _, c := range st.Conditions {
		if c.Type == typ {
			return c
		}
	}
	return metav1.Condition{}
}

// events returns the notes of the events about obj with reason.
func (e *env) events(obj client.Object, reason string) []string {
	e.t.Helper()
	list := &unstructured.UnstructuredList{}
	list.SetAPIVersion("events.k8s.io/v1")
	list.SetKind("EventList")
	require.NoError(e.t, e.k.List(context.Background(), list, client.InNamespace(obj.GetNamespace())))
	var out []string
	for _, ev := range list.Items {
		uid, _, _ := unstructured.NestedString(ev.Object, "regarding", "uid")
		r, _, _ := unstructured.NestedString(ev.Object, "reason")
		note, _, _ := unstructured.NestedString(ev.Object, "note")
		if uid == string(obj.GetUID()) && r == reason {
			out = append(out, note)
		}
	}
	return out
}

// occurrences counts the events about obj with reason, each as often as
// its series says it happened.
func (e *env) occurrences(obj client.Object, reason string) int {
	e.t.Helper()
	list := &unstructured.UnstructuredList{}
	list.SetAPIVersion("events.k8s.io/v1")
	list.SetKind("EventList")
	require.NoError(e.t, e.k.List(context.Background(), list, client.InNamespace(obj.GetNamespace())))
	n := 0
	for _, ev := range list.Items {
		uid, _, _ := unstructured.NestedString(ev.Object, "regarding", "uid")
		r, _, _ := unstructured.NestedString(ev.Object, "reason")
		if uid != string(obj.GetUID()) || r != reason {
			continue
		}
		count, found, _ := unstructured.NestedInt64(ev.Object, "series", "count")
		if !found {
			count = 1
		}
		n += int(count)
	}
	return n
}

// leftovers lists what Ferry still holds for a CR: assignments and key
// copies in Ferry's namespace, Ferry's VolumeAttachments of pv, mounts
// under the nodes' Ferry roots.
func (e *env) leftovers(uid, pv string) []string {
	e.t.Helper()
	ctx := context.Background()
	var out []string
	mas := &agentv1alpha1.MountAssignmentList{}
	require.NoError(e.t, e.k.List(ctx, mas, client.InNamespace(harness.Namespace)))
	for _, ma := range mas.Items {
		if ma.Spec.Owner.UID == uid {
			out = append(out, "assignment "+ma.Name)
		}
	}
	secrets := &corev1.SecretList{}
	require.NoError(e.t, e.k.List(ctx, secrets, client.InNamespace(harness.Namespace)))
	for _, s := range secrets.Items {
		if strings.Contains(s.Name, uid) {
			out = append(out, "key copy "+s.Name)
		}
	}
	vas := &storagev1.VolumeAttachmentList{}
	require.NoError(e.t, e.k.List(ctx, vas, client.MatchingLabels{assign.ManagedByLabel: assign.ManagedBy}))
	for _, va := range vas.Items {
		if src := va.Spec.Source.PersistentVolumeName; pv != "" && src != nil && *src == pv {
			out = append(out, "attachment "+va.Name)
		}
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(e.t, err)
	for _, n := range e.c.Nodes {
		root := csi.DefaultRoot(n.KubeletDir)
		for _, line := range strings.Split(string(mounts), "\n") {
			if strings.Contains(line, root+"/") && strings.Contains(line, uid) {
				out = append(out, "mount "+line)
			}
		}
	}
	return out
}
