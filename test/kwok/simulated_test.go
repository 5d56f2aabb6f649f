// Package kwok_test is make scale's second scenario: one cluster whose
// nodes kwok simulates (sigs.k8s.io/kwok keeps their status and leases as
// kubelets would), Ferry's real controller, and an agent simulator that
// reports each assignment's steps as the agents do without moving data;
// thousands of ReplicationSources and their destinations. It finds what
// limits the control plane, apart from the data plane.
package kwok_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/ferrysync/ferry/internal/testenv"
	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	apischeme "github.com/ferrysync/ferry/pkg/api/scheme"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/transfer/sshkeys"
	"github.com/ferrysync/ferry/test/cluster"
	"github.com/ferrysync/ferry/test/harness"
	"github.com/ferrysync/ferry/test/scale"
)

const (
	// simDriver is the CSI driver the simulated volumes name; every
	// simulated node lists it in its CSINode, and nothing attaches.
	simDriver = "sim.ferrysync.io"
	// nodeIP is the address kwok gives every node.
	nodeIP = "10.0.0.1"
	// ns holds the run's objects.
	ns = "scale"
	// pprofAddr is where the controller serves its profiles.
	pprofAddr = "127.0.0.1:18312"
)

// BenchmarkSimulatedNodes runs FERRY_SIM_NODES (1,000) kwok nodes and, per
// level of FERRY_SIM_N (default "2000,5000,10000"), that many pairs: a
// Direct ReplicationSource on FERRY_SIM_SCHEDULE (*/5) and its Direct
// ReplicationDestination, in one cluster; the simulated transfer takes
// FERRY_SIM_DELAY seconds (1) in one of a node's 4 slots. Each level waits
// until every new source has synced, then measures FERRY_SIM_INTERVALS (2)
// schedule intervals from one's start. make scale runs it and writes its
// section of docs/scale.md.
func BenchmarkSimulatedNodes(b *testing.B) {
	testenv.NeedRoot(b)
	kwokBin := os.Getenv("KWOK")
	if kwokBin == "" {
		b.Fatal("KWOK is not set: run make scale, which builds kwok")
	}
	schedule := os.Getenv("FERRY_SIM_SCHEDULE")
	if schedule == "" {
		schedule = "*/5 * * * *"
	}
	interval := scheduleInterval(b, schedule)
	bins, err := harness.Build()
	require.NoError(b, err)
	b.Cleanup(bins.Remove)
	ctrllog.SetLogger(logr.Discard())
	c, err := cluster.Start(context.Background(), cluster.Options{ServiceCIDR: "10.112.0.0/16", Log: logr.Discard()})
	require.NoError(b, err)
	b.Cleanup(func() { require.NoError(b, c.Stop()) }) // last: after what uses it
	nodes := int(testenv.EnvFloat("FERRY_SIM_NODES", 1000))
	startKwok(b, c, kwokBin, nodes)
	k := bulkClient(b, c.Config)
	require.NoError(b, k.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: harness.Namespace}}))
	ctl := bins.StartController(b, c, 18310, append(slices.Clone(harness.Shipped), "--pprof-bind-address="+pprofAddr)...)
	startSim(b, c.Config, time.Duration(testenv.EnvFloat("FERRY_SIM_DELAY", 1)*float64(time.Second)))
	r := &simRun{t: b, k: k, schedule: schedule, objects: followCache(b, c.Config)}
	r.keys()

	target := scale.Target{Clusters: map[string]*rest.Config{"cluster": c.Config}, Procs: map[string]*harness.Proc{"controller": ctl},
		Controller: ctl, Comms: []string{"kube-apiserver", "etcd", "kwok"},
		// kwok's node leases and status grow with the nodes, not the syncs.
		Background: []string{"leases", "nodes", "nodes/status"}}
	window := time.Duration(testenv.EnvFloat("FERRY_SIM_INTERVALS", 2)) * interval
	doc := scale.Doc()
	var rows []scale.Row
	var profile string
	for _, n := range scale.Levels(b, "FERRY_SIM_N", "2000,5000,10000") {
		r.grow(n)
		<-time.After(time.Until(time.Now().Truncate(interval).Add(interval)))
		before := target.Sample(b)
		profiled := make(chan error, 1)
		go func() { // the interval's first minute: its burst
			var err error
			profile, err = scale.Profile(context.Background(), pprofAddr, c.Dir, time.Minute)
			profiled <- err
		}()
		syncs := scale.Follow(b, r.objects, ns, before.At(), window, 10*time.Second, interval)
		rows = append(rows, scale.NewRow(n, before, target.Sample(b), syncs, ""))
		require.NoError(b, <-profiled)
		b.Logf("%s", rows[len(rows)-1])
		// After each level: a later level that fails keeps the ones before.
		require.NoError(b, scale.Write(doc, scale.Section{Name: "simulated-nodes", Title: "Simulated nodes",
			Intro: fmt.Sprintf(`One cluster of %d nodes simulated by kwok v0.8.0 (status and leases as kubelets keep them),
the real kube-controller-manager, Ferry's controller, and an agent simulator in place of the
agents: it reports each assignment's steps as an agent does (Queued, Transferring, the end on both
sides, the destination's hold) without moving data; a transfer takes %s in one of its node's 4
slots. N Direct ReplicationSources on `+"`%s`"+` and their Direct ReplicationDestinations, in the same
cluster (so its requests per sync count both sides). Each level adds pairs, waits until every
new source has synced, then measures %s from an interval's start.`, nodes,
				time.Duration(testenv.EnvFloat("FERRY_SIM_DELAY", 1)*float64(time.Second)), schedule, window),
			Sides: []string{"cluster"}, X: "ReplicationSources on " + schedule, Rows: rows, Profile: profile}))
	}
}

// scheduleInterval is the period of a "*/m * * * *" schedule.
func scheduleInterval(t testing.TB, schedule string) time.Duration {
	step, ok := strings.CutPrefix(strings.Fields(schedule)[0], "*/")
	m, err := strconv.Atoi(step)
	require.True(t, ok && err == nil && strings.HasSuffix(schedule, " * * * *"), "FERRY_SIM_SCHEDULE must be */m * * * *, not %q", schedule)
	return time.Duration(m) * time.Minute
}

// bulkClient is a client for creating thousands of objects: no client-side
// rate limit (the apiserver's priority and fairness still applies).
func bulkClient(t testing.TB, cfg *rest.Config) client.Client {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = -1, 0
	k, err := client.New(cfg, client.Options{Scheme: scheme(t)})
	require.NoError(t, err)
	return k
}

// nodeStage is kwok's one stage here: a node it manages becomes Ready with
// an address, as a kubelet's registration makes it (leases then keep it so).
const nodeStage = `apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: node-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.status.phase'
      operator: 'NotIn'
      values: ['Running']
  next:
    statusTemplate: |
      phase: Running
      conditions:
      - type: Ready
        status: "True"
        reason: KubeletReady
        message: simulated by kwok
        lastHeartbeatTime: {{ Now | Quote }}
        lastTransitionTime: {{ Now | Quote }}
      addresses:
      - type: InternalIP
        address: {{ NodeIP | Quote }}
      - type: Hostname
        address: {{ NodeName | Quote }}
      allocatable: {cpu: "32", memory: 128Gi, pods: "110"}
      capacity: {cpu: "32", memory: 128Gi, pods: "110"}
`

// startKwok runs kwok for nodes Node objects it creates, with their
// CSINodes (the simulated driver on each) and the driver's CSIDriver.
func startKwok(t testing.TB, c *cluster.Cluster, bin string, nodes int) {
	ctx := context.Background()
	stage := filepath.Join(c.Dir, "kwok-stage.yaml")
	require.NoError(t, os.WriteFile(stage, []byte(nodeStage), 0o644))
	log, err := os.Create(filepath.Join(c.Dir, "logs", "kwok.log"))
	require.NoError(t, err)
	defer log.Close()
	cmd := exec.Command(bin, "--kubeconfig="+c.Kubeconfig, "--config="+stage, "--manage-all-nodes=false",
		"--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake", "--node-ip="+nodeIP,
		"--node-lease-duration-seconds=40", "--server-address=127.0.0.1:0", "--v=WARN")
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	k := bulkClient(t, c.Config)
	require.NoError(t, k.Create(ctx, &storagev1.CSIDriver{ObjectMeta: metav1.ObjectMeta{Name: simDriver},
		Spec: storagev1.CSIDriverSpec{AttachRequired: ptr.To(false)}}))
	require.NoError(t, scale.Parallel(nodes, func(i int) error {
		name := fmt.Sprintf("kwok-node-%04d", i)
		if err := k.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name,
			Annotations: map[string]string{"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
			Labels:      map[string]string{corev1.LabelHostname: name, "type": "kwok"}}}); err != nil {
			return err
		}
		return k.Create(ctx, &storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: storagev1.CSINodeSpec{Drivers: []storagev1.CSINodeDriver{{Name: simDriver, NodeID: name}}}})
	}))
	testenv.Eventually(t, fmt.Sprintf("%d kwok nodes Ready", nodes), 5*time.Minute, func() bool {
		list := &corev1.NodeList{}
		require.NoError(t, k.List(ctx, list, client.MatchingLabels{"type": "kwok"}))
		ready := 0
		for _, n := range list.Items {
			for _, cond := range n.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					ready++
				}
			}
		}
		return ready == nodes
	})
}

// startSim runs the agent simulator in this process until the benchmark
// ends.
func startSim(t testing.TB, cfg *rest.Config, delay time.Duration) {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = -1, 0
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme(t), Metrics: metricsserver.Options{BindAddress: "0"},
		Logger: logr.Discard(), Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&agentv1alpha1.MountAssignment{}: {Namespaces: map[string]cache.Config{harness.Namespace: {}}}}}})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	require.NoError(t, startAgentSim(ctx, mgr, delay, 4))
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
}

// simRun is the pairs made so far.
type simRun struct {
	t        testing.TB
	k        client.Client
	schedule string
	n        int
	// objects reads the run's CRs from a cache: listing thousands from
	// the apiserver every few seconds would be much of what it measures.
	objects client.Reader
}

// keys makes the namespace and the one key Secret every CR uses, and the
// cache the run follows the sources through.
func (r *simRun) keys() {
	ctx := context.Background()
	require.NoError(r.t, r.k.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}))
	d, s, err := sshkeys.Secrets()
	require.NoError(r.t, err)
	maps.Copy(d, s)
	require.NoError(r.t, r.k.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "keys"}, Data: d}))
}

// grow adds pairs up to n, in two passes (the sources need their
// destinations' addresses), and waits until each new source has synced.
func (r *simRun) grow(n int) {
	t, ctx := r.t, context.Background()
	require.NoError(t, scale.Parallel(n-r.n, func(i int) error {
		name := fmt.Sprintf("v%05d", r.n+i)
		if err := r.volume("src-"+name, name); err != nil {
			return err
		}
		if err := r.volume("dst-"+name, name); err != nil {
			return err
		}
		return r.k.Create(ctx, &volsyncv1alpha1.ReplicationDestination{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: volsyncv1alpha1.ReplicationDestinationSpec{Rsync: &volsyncv1alpha1.ReplicationDestinationRsyncSpec{
				ReplicationDestinationVolumeOptions: volsyncv1alpha1.ReplicationDestinationVolumeOptions{
					CopyMethod: volsyncv1alpha1.CopyMethodDirect, DestinationPVC: ptr.To("dst-" + name)},
				SSHKeys: ptr.To("keys")}}})
	}))
	testenv.Eventually(t, fmt.Sprintf("all %d destinations to have an address", n), 30*time.Minute, func() bool {
		list := &volsyncv1alpha1.ReplicationDestinationList{}
		require.NoError(t, r.objects.List(ctx, list, client.InNamespace(ns)))
		ready := 0
		for _, rd := range list.Items {
			if rd.Status.Rsync != nil && rd.Status.Rsync.Address != nil {
				ready++
			}
		}
		return ready >= n
	})
	require.NoError(t, scale.Parallel(n-r.n, func(i int) error {
		name := fmt.Sprintf("v%05d", r.n+i)
		rd := &volsyncv1alpha1.ReplicationDestination{}
		if err := r.objects.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, rd); err != nil {
			return err
		}
		return r.k.Create(ctx, &volsyncv1alpha1.ReplicationSource{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: volsyncv1alpha1.ReplicationSourceSpec{SourcePVC: "src-" + name, Trigger: &volsyncv1alpha1.TriggerSpec{Schedule: ptr.To(r.schedule)},
				Rsync: &volsyncv1alpha1.ReplicationSourceRsyncSpec{ReplicationSourceVolumeOptions: volsyncv1alpha1.ReplicationSourceVolumeOptions{
					CopyMethod: volsyncv1alpha1.CopyMethodDirect}, SSHKeys: ptr.To("keys"), Address: rd.Status.Rsync.Address}}})
	}))
	r.n = n
	testenv.Eventually(t, fmt.Sprintf("all %d sources to have synced", n), 30*time.Minute, func() bool {
		list := &volsyncv1alpha1.ReplicationSourceList{}
		require.NoError(t, r.objects.List(ctx, list, client.InNamespace(ns)))
		synced := 0
		for _, rs := range list.Items {
			if rs.Status.LastSyncTime != nil {
				synced++
			}
		}
		return synced >= n
	})
}

// volume makes a claim of the simulated driver and its PV, bound to each
// other as a provisioner and kube-controller-manager's binder leave them
// (the binder, left to bind thousands, would take most of the run).
func (r *simRun) volume(claim, owner string) error {
	ctx := context.Background()
	size := corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}
	modes := []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	pvName := ns + "-" + claim
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: claim,
		Annotations: map[string]string{"pv.kubernetes.io/bind-completed": "yes"}},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: modes, VolumeName: pvName, StorageClassName: ptr.To(""),
			Resources: corev1.VolumeResourceRequirements{Requests: size}}}
	if err := r.k.Create(ctx, pvc); err != nil {
		return fmt.Errorf("create claim %s of %s: %w", claim, owner, err)
	}
	created := pvc.DeepCopy()
	pvc.Status = corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound, AccessModes: modes, Capacity: size}
	// Patched, not updated: the binder may have written it meanwhile.
	if err := r.k.Status().Patch(ctx, pvc, client.MergeFrom(created)); err != nil {
		return fmt.Errorf("bind claim %s: %w", claim, err)
	}
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: pvName},
		Spec: corev1.PersistentVolumeSpec{Capacity: size, AccessModes: modes, StorageClassName: "",
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: ns, Name: claim, UID: pvc.UID},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: simDriver, VolumeHandle: ns + "/" + claim}}}}
	if err := r.k.Create(ctx, pv); err != nil {
		return fmt.Errorf("create volume %s: %w", pvName, err)
	}
	createdPV := pv.DeepCopy()
	pv.Status.Phase = corev1.VolumeBound
	if err := r.k.Status().Patch(ctx, pv, client.MergeFrom(createdPV)); err != nil {
		return fmt.Errorf("bind volume %s: %w", pvName, err)
	}
	return nil
}

// followCache is a cache of the run's CRs, running until the benchmark
// ends.
func followCache(t testing.TB, cfg *rest.Config) client.Reader {
	c, err := cache.New(cfg, cache.Options{Scheme: scheme(t), DefaultNamespaces: map[string]cache.Config{ns: {}}})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = c.Start(ctx) }()
	for _, obj := range []client.Object{&volsyncv1alpha1.ReplicationSource{}, &volsyncv1alpha1.ReplicationDestination{}} {
		_, err := c.GetInformer(ctx, obj)
		require.NoError(t, err)
	}
	require.True(t, c.WaitForCacheSync(ctx))
	return c
}

// scheme knows Ferry's kinds and the core ones.
func scheme(t testing.TB) *runtime.Scheme {
	s, err := apischeme.New()
	require.NoError(t, err)
	return s
}
