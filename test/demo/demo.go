// Package demo walks the spec's replication flow on two local clusters with
// Ferry running, for a person to watch (`make demo`). It drives Ferry only as
// a user would: manifests applied, a Secret copied, status read with kubectl.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/ferrysync/ferry/internal/testenv"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/snapshot"
	"github.com/ferrysync/ferry/test/cluster"
	"github.com/ferrysync/ferry/test/harness"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// failNow ends the demo at a failed step; Run turns it into an error after
// tearing everything down.
type failNow struct{}

// runner plays a test for the harness: a failed check prints and ends the
// demo, cleanups run at the end in reverse order.
type runner struct {
	ctx      context.Context
	out      io.Writer
	cleanups []func()
	failed   bool
	start    time.Time
}

func (r *runner) Errorf(format string, args ...any) {
	r.failed = true
	fmt.Fprintf(r.out, "FAILED: "+format+"\n", args...)
}
func (r *runner) FailNow()          { panic(failNow{}) }
func (r *runner) Helper()           {}
func (r *runner) Fatal(args ...any) { r.Errorf("%s", fmt.Sprint(args...)); r.FailNow() }
func (r *runner) Cleanup(f func())  { r.cleanups = append(r.cleanups, f) }

// step announces a step, or ends the demo when it was interrupted.
func (r *runner) step(format string, args ...any) {
	if r.ctx.Err() != nil {
		fmt.Fprintln(r.out, "\ninterrupted; tearing down")
		r.FailNow()
	}
	fmt.Fprintf(r.out, "\n[%5.1fs] ==> %s\n", time.Since(r.start).Seconds(), fmt.Sprintf(format, args...))
}

func (r *runner) say(format string, args ...any) { fmt.Fprintf(r.out, "    "+format+"\n", args...) }

// check fails the demo on err.
func (r *runner) check(err error, what string) {
	if err != nil && r.ctx.Err() != nil {
		fmt.Fprintln(r.out, "\ninterrupted; tearing down")
		r.FailNow()
	}
	if err != nil {
		r.Fatal(what + ": " + err.Error())
	}
}

// Run walks the flow; everything it started is gone when it returns.
func Run(ctx context.Context, out io.Writer) (err error) {
	r := &runner{ctx: ctx, out: out, start: time.Now()}
	defer func() {
		if p := recover(); p != nil {
			if _, ok := p.(failNow); !ok {
				panic(p)
			}
			err = errors.New("the demo did not finish")
		}
		fmt.Fprintln(out, "\n==> tearing down: agents, controllers, clusters, mounts, loop devices, namespaces, bridge")
		for i := len(r.cleanups) - 1; i >= 0; i-- {
			r.cleanups[i]()
		}
		if err == nil && r.failed {
			err = errors.New("a check failed")
		}
		if err == nil {
			fmt.Fprintf(out, "done in %.0fs\n", time.Since(r.start).Seconds())
		}
	}()
	r.run()
	return nil
}

func (r *runner) run() {
	src, dst := r.startClusters()
	r.sourceVolume(src)
	rd := r.destination(dst)
	r.copyKeys(src, dst, rd)
	img := r.firstSync(src, dst, rd)
	r.secondSync(src, dst, img)
}

// startClusters starts the two clusters on one network and installs
// Ferry in each from deploy/.
func (r *runner) startClusters() (src, dst *cluster.Cluster) {
	root, err := testenv.RepoRoot()
	r.check(err, "repository")
	r.step("starting two clusters on this machine, joined on one node network: real nodes (kubelet, containerd) in namespaces")
	network, err := cluster.NewNetwork(networkName, "10.249.0")
	r.check(err, "network")
	r.Cleanup(func() { _ = network.Close() })
	src = r.cluster(network, root, "source", "10.96.0.0/24", "10.98.0.0/24")
	dst = r.cluster(network, root, "dest", "10.97.0.0/24", "10.99.0.0/24")
	r.check(cluster.Connect(src, dst), "join the clusters")
	r.say("source cluster: KUBECONFIG=%s", src.Kubeconfig)
	r.say("destination cluster: KUBECONFIG=%s", dst.Kubeconfig)

	r.step("installing Ferry in each from deploy/: kubectl apply -k (an overlay that only sets the images' tag)")
	for _, c := range []*cluster.Cluster{src, dst} {
		r.check(c.InstallFerry(r.ctx, root), "install Ferry")
		// Before the clusters stop: every CR goes, so no volume stays held.
		r.Cleanup(func() { deleteAll(r, c) })
	}
	r.kubectl(src, "get", "pods", "-n", cluster.FerryNamespace, "-o", "wide")
	for _, n := range src.Nodes {
		r.say("agent on %s: metrics at http://%s:9810/metrics", n.Name, n.Net.IP)
	}
	return src, dst
}

// sourceVolume makes the source's database volume, written by a pod.
func (r *runner) sourceVolume(src *cluster.Cluster) {
	r.step("the source cluster: a database volume, mysql-pv-claim in namespace source, written by a pod")
	r.kubectl(src, "create", "namespace", "source")
	r.kubectl(src, "annotate", "namespace", "source", volsyncv1alpha1.PrivilegedMoversAnnotation+"=true")
	r.check(src.Client.Create(r.ctx, &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "source", Name: "mysql-pv-claim"},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}}}),
		"source claim")
	r.runPod(src, cluster.AppPod("source", "database-1", "mysql-pv-claim", databaseScript(1)))
	r.say("the pod wrote a database's files: tables, a binlog, an owned config with a hard link, a symlink, a sparse file, a sqlite3 db")
}

// destination applies the spec's ReplicationDestination and waits for its
// address and keys.
func (r *runner) destination(dst *cluster.Cluster) *volsyncv1alpha1.ReplicationDestination {
	privileged := map[string]string{volsyncv1alpha1.PrivilegedMoversAnnotation: "true"}
	r.step("the destination cluster: the spec's ReplicationDestination (examples/volsync/destination.yaml)")
	r.check(dst.Client.Create(r.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "dest", Annotations: privileged}}), "namespace")
	r.kubectl(dst, "apply", "-f", harness.ExamplePath(r, "destination.yaml"))
	rd := &volsyncv1alpha1.ReplicationDestination{}
	testenv.Eventually(r, "the destination's address and key Secret", 2*time.Minute, func() bool {
		r.check(dst.Client.Get(r.ctx, client.ObjectKey{Namespace: "dest", Name: "database-destination"}, rd), "get")
		return rd.Status.Rsync != nil && rd.Status.Rsync.Address != nil && rd.Status.Rsync.SSHKeys != nil
	})
	r.kubectl(dst, "get", "replicationdestination", "-n", "dest", "-o", "wide")
	r.say("status.rsync.address=%s status.rsync.sshKeys=%s", *rd.Status.Rsync.Address, *rd.Status.Rsync.SSHKeys)
	return rd
}

// copyKeys copies the destination's key Secret to the source cluster, as
// the spec's "Copying the SSH key secret" does.
func (r *runner) copyKeys(src, dst *cluster.Cluster, rd *volsyncv1alpha1.ReplicationDestination) {
	r.step("copying the SSH key Secret to the source cluster, as the spec's \"Copying the SSH key secret\" does")
	secret := &corev1.Secret{}
	r.check(dst.Client.Get(r.ctx, client.ObjectKey{Namespace: "dest", Name: *rd.Status.Rsync.SSHKeys}, secret), "get Secret")
	r.say("kubectl -n dest get secret %s -o yaml > secret.yaml; (remove namespace, uid, ownerReferences...); kubectl -n source create -f secret.yaml", secret.Name)
	r.check(src.Client.Create(r.ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "source", Name: secret.Name},
		Type: secret.Type, Data: secret.Data}), "create Secret")
}

// firstSync applies the spec's ReplicationSource, triggers it and shows
// that the image holds the source's data; it returns the image.
func (r *runner) firstSync(src, dst *cluster.Cluster, rd *volsyncv1alpha1.ReplicationDestination) string {
	r.step("the source: the spec's ReplicationSource (examples/volsync/source.yaml), address from the destination")
	rs := &volsyncv1alpha1.ReplicationSource{}
	harness.Example(r, "source.yaml", rs)
	rs.Spec.Rsync.Address = rd.Status.Rsync.Address
	// Triggered now rather than at the example's next ten-minute mark.
	rs.Spec.Trigger = &volsyncv1alpha1.TriggerSpec{Manual: "first"}
	shown, _ := yaml.Marshal(rs.Spec)
	r.say("spec:\n        %s", strings.ReplaceAll(strings.TrimSpace(string(shown)), "\n", "\n        "))
	triggered := time.Now()
	r.check(src.Client.Create(r.ctx, rs), "create the source")
	r.waitSynced(src, "first")
	r.say("trigger → lastSyncTime: %.2fs (the spec's example shows VolSync's source at 7.8 s)", time.Since(triggered).Seconds())
	img := r.waitImage(dst, "")
	r.kubectl(src, "get", "replicationsource", "-n", "source", "-o", "wide")
	r.kubectl(dst, "get", "replicationdestination", "-n", "dest", "-o", "wide")
	r.events(src, "replicationsource", "source", "database-source")
	r.events(dst, "replicationdestination", "dest", "database-destination")
	r.say("bytes sent by the source cluster's agents: %.0f", sentBytes(r, src))

	r.step("proving it: a claim restored from latestImage (%s) holds exactly the source's data", img)
	r.compare(src, dst, img)
	return img
}

// secondSync changes the data and syncs again: only the change moves,
// and the new image replaces the previous one.
func (r *runner) secondSync(src, dst *cluster.Cluster, img string) {
	r.step("changing the data (a new binlog segment, a row in a table) and syncing again")
	r.runPod(src, cluster.AppPod("source", "database-2", "mysql-pv-claim", databaseScript(2)))
	before := sentBytes(r, src)
	triggered := time.Now()
	r.check(patchManual(r, src, "second"), "trigger")
	synced := r.waitSynced(src, "second")
	r.say("trigger → lastSyncTime: %.2fs", time.Since(triggered).Seconds())
	r.say("the source sent %.0f bytes this time, for %d bytes changed: only the change moved", sentBytes(r, src)-before, changedBytes)
	r.say("latestMoverStatus: %s", strings.SplitN(synced.Status.LatestMoverStatus.Logs, "\n", 2)[0])
	prev := img
	img = r.waitImage(dst, img)
	testenv.Eventually(r, "the previous image to be deleted", time.Minute, func() bool {
		return apierrors.IsNotFound(dst.Client.Get(r.ctx, client.ObjectKey{Namespace: "dest", Name: prev}, snapshot.New()))
	})
	r.say("the new image replaced the previous one, which is deleted:")
	r.kubectl(dst, "get", "volumesnapshot", "-n", "dest")
	r.compare(src, dst, img)
}

// networkName names the demo's network: its namespaces and bridge.
const networkName = "fd"

// cluster starts one of the two clusters, with real nodes, stopped at the
// end.
func (r *runner) cluster(network *cluster.Network, root, name, services, balancers string) *cluster.Cluster {
	c, err := cluster.Start(r.ctx, cluster.Options{Network: network, ServiceCIDR: services, LoadBalancerCIDR: balancers,
		Nodes: []string{name + "-node-a", name + "-node-b"}, Kubelet: true, Images: filepath.Join(root, "bin", "images"),
		Log: logr.Discard()})
	r.check(err, "start the "+name+" cluster (make demo builds the images first)")
	r.check(remember(c.Dir), "state")
	r.Cleanup(func() {
		if err := c.Stop(); err != nil {
			fmt.Fprintln(r.out, "stop cluster:", err)
		}
	})
	return c
}

// runPod runs a pod of the application image to completion, fails the
// demo unless it succeeded, and deletes it.
func (r *runner) runPod(c *cluster.Cluster, pod *corev1.Pod) {
	r.check(c.Client.Create(r.ctx, pod), "create pod "+pod.Name)
	r.check(c.WaitPodSucceeded(r.ctx, pod.Namespace, pod.Name, 3*time.Minute), "pod "+pod.Name)
	r.check(c.Client.Delete(r.ctx, pod), "delete pod "+pod.Name)
}

// kubectl runs the real kubectl against a cluster and shows its output.
func (r *runner) kubectl(c *cluster.Cluster, args ...string) {
	cmd := exec.Command(filepath.Join(c.BinDir, "kubectl"), append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	fmt.Fprintf(r.out, "    $ kubectl %s\n", strings.Join(args, " "))
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		fmt.Fprintf(r.out, "      %s\n", l)
	}
	r.check(err, "kubectl "+strings.Join(args, " "))
}

// events shows the Events section of kubectl describe.
func (r *runner) events(c *cluster.Cluster, kind, ns, name string) {
	out, err := exec.Command(filepath.Join(c.BinDir, "kubectl"), "--kubeconfig", c.Kubeconfig, "describe", kind, "-n", ns, name).CombinedOutput()
	r.check(err, "kubectl describe")
	fmt.Fprintf(r.out, "    $ kubectl describe %s -n %s %s   (events)\n", kind, ns, name)
	if i := strings.Index(string(out), "Events:"); i >= 0 {
		for _, l := range strings.Split(strings.TrimRight(string(out[i:]), "\n"), "\n") {
			fmt.Fprintf(r.out, "      %s\n", l)
		}
	}
}

// waitSynced waits until the source has completed manual sync value,
// showing its progress.
func (r *runner) waitSynced(c *cluster.Cluster, value string) *volsyncv1alpha1.ReplicationSource {
	rs := &volsyncv1alpha1.ReplicationSource{}
	last := ""
	testenv.Eventually(r, "the source's sync "+value, 3*time.Minute, func() bool {
		r.check(c.Client.Get(r.ctx, client.ObjectKey{Namespace: "source", Name: "database-source"}, rs), "get")
		for _, cond := range rs.Status.Conditions {
			if cond.Type == volsyncv1alpha1.ConditionSynchronizing && cond.Message != last {
				last = cond.Message
				r.say("%-16s %s", cond.Reason, cond.Message)
			}
		}
		return rs.Status.LastManualSync == value
	})
	if rs.Status.LatestMoverStatus.Result != volsyncv1alpha1.MoverResultSuccessful {
		r.Fatal("the sync failed: " + rs.Status.LatestMoverStatus.Logs)
	}
	return rs
}

// waitImage waits until the destination names an image other than prev.
func (r *runner) waitImage(c *cluster.Cluster, prev string) string {
	rd := &volsyncv1alpha1.ReplicationDestination{}
	testenv.Eventually(r, "the destination's new image", 2*time.Minute, func() bool {
		r.check(c.Client.Get(r.ctx, client.ObjectKey{Namespace: "dest", Name: "database-destination"}, rd), "get")
		return rd.Status.LatestImage != nil && rd.Status.LatestImage.Name != prev && rd.Status.LastSyncTime != nil
	})
	return rd.Status.LatestImage.Name
}

// compare restores img in the destination cluster and compares listings
// (type, mode, owner, size, hard links, mtime, link target, sha256 of every
// entry)
// that pods print of it and of the source's volume.
func (r *runner) compare(src, dst *cluster.Cluster, img string) {
	name := "restored-" + img
	r.check(dst.Client.Create(r.ctx, &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "dest", Name: name},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:  corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("2Gi")}},
			DataSource: &corev1.TypedLocalObjectReference{APIGroup: ptr.To("snapshot.storage.k8s.io"), Kind: "VolumeSnapshot", Name: img}}}),
		"restore "+img)
	want := strings.Split(r.listing(src, "source", "mysql-pv-claim"), "\n")
	got := r.listing(dst, "dest", name)
	same := 0
	for _, line := range want {
		mark := "≠"
		if strings.Contains("\n"+got+"\n", "\n"+line+"\n") {
			mark = "="
			same++
		}
		r.say("%s %s", mark, line)
	}
	if same != len(want) || len(strings.Split(got, "\n")) != len(want) {
		r.Fatal(fmt.Sprintf("the replica differs: %d of %d entries identical", same, len(want)))
	}
	r.say("identical: all %d entries (type, mode, owner, size, hard links, mtime, link target, sha256)", same)
}

// listing has a pod print every entry of a claim, sorted.
func (r *runner) listing(c *cluster.Cluster, ns, claim string) string {
	pod := cluster.AppPod(ns, "list-"+claim, claim, `cd /data && find . -mindepth 1 -not -name lost+found -not -path './lost+found/*' `+
		`\( -type f -printf '%y %m %U:%G %s %n %T@ %P ' -exec sh -c 'sha256sum < "$0" | cut -c1-16' {} \; \) -o \( -printf '%y %m %U:%G %n %T@ %P %l\n' \) | sort`)
	r.check(c.Client.Create(r.ctx, pod), "create pod "+pod.Name)
	r.check(c.WaitPodSucceeded(r.ctx, ns, pod.Name, 3*time.Minute), "pod "+pod.Name)
	out, err := c.PodLogs(r.ctx, ns, pod.Name)
	r.check(err, "logs of "+pod.Name)
	r.check(c.Client.Delete(r.ctx, pod), "delete pod "+pod.Name)
	return strings.TrimSpace(out)
}

// patchManual sets the source's manual trigger.
func patchManual(r *runner, c *cluster.Cluster, value string) error {
	rs := &volsyncv1alpha1.ReplicationSource{}
	if err := c.Client.Get(r.ctx, client.ObjectKey{Namespace: "source", Name: "database-source"}, rs); err != nil {
		return err
	}
	patch := client.MergeFrom(rs.DeepCopy())
	rs.Spec.Trigger.Manual = value
	return c.Client.Patch(r.ctx, rs, patch)
}

// deleteAll deletes every ReplicationSource and ReplicationDestination and
// waits until Ferry has released their volumes.
func deleteAll(r *runner, c *cluster.Cluster) {
	ctx := context.Background()
	_ = c.Client.DeleteAllOf(ctx, &volsyncv1alpha1.ReplicationSource{}, client.InNamespace("source"))
	_ = c.Client.DeleteAllOf(ctx, &volsyncv1alpha1.ReplicationDestination{}, client.InNamespace("dest"))
	_ = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		var rss volsyncv1alpha1.ReplicationSourceList
		var rds volsyncv1alpha1.ReplicationDestinationList
		return c.Client.List(ctx, &rss) == nil && c.Client.List(ctx, &rds) == nil && len(rss.Items)+len(rds.Items) == 0, nil
	})
}
