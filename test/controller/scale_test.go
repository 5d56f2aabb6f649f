package controller_test

import (
	"context"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/transfer/sshkeys"
	"github.com/ferrysync/ferry/test/harness"
	"github.com/ferrysync/ferry/test/scale"
)

// BenchmarkScale runs many one-minute schedules on the real agents of the
// two test clusters (sources in one, destinations in the other, two nodes
// each) and measures, per number of ReplicationSources: missed intervals,
// trigger lag, sync duration, API requests per sync, and the CPU and memory
// of the controller, the agents, the apiservers and etcd. make scale runs
// it and writes docs/scale.md (FERRY_SCALE_N, default "100,250,500";
// FERRY_SCALE_MINUTES per level, default 10; FERRY_SCALE_DOC, where to
// write). Levels add pairs to the previous level's, half Direct and half
// Clone sources, Direct destinations; most syncs find the volume unchanged.
func BenchmarkScale(b *testing.B) {
	e := setup(b, shared, 18110)
	far := setup(b, remote, 18120)
	production(b, e)
	production(b, far)
	levels := scale.Levels(b, "FERRY_SCALE_N", "100,250,500")
	minutes := int(testenv.EnvFloat("FERRY_SCALE_MINUTES", 10))
	s := newScaleRun(e, far)
	doc := scale.Doc()
	var rows []scale.Row
	for _, n := range levels {
		s.grow(n)
		rows = append(rows, s.measure(n, time.Duration(minutes)*time.Minute))
		b.Logf("%s", rows[len(rows)-1])
		// After each level: a later level that fails keeps the ones before.
		require.NoError(b, scale.Write(doc, scale.Section{Name: "real-agents", Title: "Real agents",
			Intro: fmt.Sprintf(`A source cluster and a destination cluster of two nodes each, with Ferry's real agents moving
the data. N ReplicationSources on `+"`*/1`"+`, half Direct and half Clone, into Direct destinations; the
volumes do not change between syncs (each sync finds its tree unchanged). Each level adds pairs
to the one before, waits until every new source has synced, then measures %d minutes from a
minute's start.`, minutes),
			Sides: []string{"source", "destination"}, X: "ReplicationSources on */1", Rows: rows}))
	}
}

// production restarts an env's controller and agents with their shipped
// intervals: the harness's (polls every 250 ms) are a test's, and would
// measure the test's load.
func production(t testing.TB, e *env) {
	_, err := e.ctrl.Stop()
	require.NoError(t, err)
	e.ctrl.StartWith(harness.Shipped...)
	for _, a := range e.agents {
		_, err := a.Stop()
		require.NoError(t, err)
		// The shipped port range too (any): the tests' hundred ports would
		// run out at a hundred destinations on a node.
		a.StartWith("--progress-interval=2s", "--retry-backoff=2s", "--grace-period=30s", "--zap-log-level=info", "--ssh-port-range=")
	}
}

// scaleNS is the namespace of the scale run's objects in both clusters.
const scaleNS = "scale"

// scaleRun is the pairs made so far.
type scaleRun struct {
	src, dst *env
	n        int
}

// newScaleRun makes the namespaces and one key Secret both sides' CRs use
// (a key pair per pair would cost a second of RSA each, and no figure here
// depends on it).
func newScaleRun(src, dst *env) *scaleRun {
	t, ctx := src.t, context.Background()
	src.namespace(scaleNS, privileged)
	dst.namespace(scaleNS, privileged)
	d, s, err := sshkeys.Secrets()
	require.NoError(t, err)
	maps.Copy(d, s)
	for _, c := range []client.Client{src.k, dst.k} {
		require.NoError(t, c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: scaleNS, Name: "keys"}, Data: d}))
	}
	return &scaleRun{src: src, dst: dst}
}

// grow adds pairs up to n (the claims and CRs made eight at a time, the
// application's data written one claim at a time) and waits until each new
// source has synced once.
func (s *scaleRun) grow(n int) {
	t := s.src.t
	// Provisioning hundreds of volumes while hundreds sync each minute
	// takes longer than a test's claim.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	name := func(i int) string { return fmt.Sprintf("v%04d", s.n+i) }
	require.NoError(t, scale.Parallel(n-s.n, func(i int) error {
		if _, err := s.src.c.Bind(ctx, claimOf(scaleNS, name(i), "16Mi", nil)); err != nil {
			return err
		}
		_, err := s.dst.c.Bind(ctx, claimOf(scaleNS, name(i), "16Mi", nil))
		return err
	}))
	for i := range n - s.n {
		s.src.onVolume(scaleNS, name(i), false, func(dir string) { writeApp(t, dir, "1") })
	}
	require.NoError(t, scale.Parallel(n-s.n, func(i int) error {
		return s.dst.k.Create(ctx, &volsyncv1alpha1.ReplicationDestination{ObjectMeta: metav1.ObjectMeta{Namespace: scaleNS, Name: name(i)},
			Spec: volsyncv1alpha1.ReplicationDestinationSpec{Rsync: &volsyncv1alpha1.ReplicationDestinationRsyncSpec{
				ReplicationDestinationVolumeOptions: volsyncv1alpha1.ReplicationDestinationVolumeOptions{
					CopyMethod: volsyncv1alpha1.CopyMethodDirect, DestinationPVC: ptr.To(name(i))},
				SSHKeys: ptr.To("keys")}}})
	}))
	addresses := map[string]*string{}
	testenv.Eventually(t, fmt.Sprintf("all %d destinations to have an address", n), 10*time.Minute, func() bool {
		list := &volsyncv1alpha1.ReplicationDestinationList{}
		require.NoError(t, s.dst.k.List(ctx, list, client.InNamespace(scaleNS)))
		for _, rd := range list.Items {
			if rd.Status.Rsync != nil && rd.Status.Rsync.Address != nil {
				addresses[rd.Name] = rd.Status.Rsync.Address
			}
		}
		return len(addresses) >= n
	})
	require.NoError(t, scale.Parallel(n-s.n, func(i int) error {
		method := volsyncv1alpha1.CopyMethodDirect
		if (s.n+i)%2 == 1 {
			method = volsyncv1alpha1.CopyMethodClone
		}
		return s.src.k.Create(ctx, &volsyncv1alpha1.ReplicationSource{ObjectMeta: metav1.ObjectMeta{Namespace: scaleNS, Name: name(i)},
			Spec: volsyncv1alpha1.ReplicationSourceSpec{SourcePVC: name(i), Trigger: &volsyncv1alpha1.TriggerSpec{Schedule: ptr.To("*/1 * * * *")},
				Rsync: &volsyncv1alpha1.ReplicationSourceRsyncSpec{ReplicationSourceVolumeOptions: volsyncv1alpha1.ReplicationSourceVolumeOptions{CopyMethod: method},
					SSHKeys: ptr.To("keys"), Address: addresses[name(i)]}}})
	}))
	s.n = n
	testenv.Eventually(t, fmt.Sprintf("all %d sources to have synced", n), 10*time.Minute, func() bool {
		list := &volsyncv1alpha1.ReplicationSourceList{}
		require.NoError(t, s.src.k.List(ctx, list, client.InNamespace(scaleNS)))
		synced := 0
		for _, rs := range list.Items {
			if rs.Status.LastSyncTime != nil {
				synced++
			}
		}
		return synced >= n
	})
}

// measure waits for the next minute, then follows the syncs for window
// and returns the level's figures.
func (s *scaleRun) measure(n int, window time.Duration) scale.Row {
	t := s.src.t
	target := scale.Target{Clusters: map[string]*rest.Config{"source": s.src.c.Config, "destination": s.dst.c.Config},
		Procs:      map[string]*harness.Proc{"controller": s.src.ctrl, "destination controller": s.dst.ctrl},
		Controller: s.src.ctrl, Comms: []string{"kube-apiserver", "etcd"}}
	for _, e := range []*env{s.src, s.dst} {
		for i, a := range e.agents {
			target.Procs["agent "+e.c.Nodes[i].Name] = a
		}
	}
	<-time.After(time.Until(time.Now().Truncate(time.Minute).Add(time.Minute))) // the schedule's next minute
	before := target.Sample(t)
	syncs := scale.Follow(t, s.src.k, scaleNS, before.At(), window, 5*time.Second, time.Minute)
	return scale.NewRow(n, before, target.Sample(t), syncs, "source")
}
