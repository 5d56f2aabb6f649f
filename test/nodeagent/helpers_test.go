package nodeagent_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/ferrysync/ferry/internal/testenv"
	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/test/cluster"
)

// agentBinary is the node agent, built once for the package (with
// ferry-helper beside it).
var agentBinary string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse()
	if testing.Short() {
		return m.Run() // the test skips; nothing to build
	}
	dir, err := os.MkdirTemp("", "ferry-nodeagent-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	agentBinary = filepath.Join(dir, "nodeagent")
	root, err := testenv.RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// The agent and, beside it, the helper binary it starts its helper
	// processes from, as the image ships them.
	build := exec.Command("go", "build", "-o", dir+"/", "./cmd/nodeagent", "./cmd/ferry-helper")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build the node agent: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// agentProc is a node agent running as its own process in a node's network
// namespace (and the host's mount namespace, as a DaemonSet pod with
// hostNetwork and bidirectional propagation would see it).
type agentProc struct {
	t    *testing.T
	node cluster.Node
	args []string
	env  []string
	logs string
	cmd  *exec.Cmd
	done chan error
}

const ferryNamespace = "ferry-system"

func startAgent(t *testing.T, c *cluster.Cluster, node cluster.Node, extra ...string) *agentProc {
	t.Helper()
	a := &agentProc{t: t, node: node, logs: filepath.Join(c.Dir, "logs", "nodeagent-"+node.Name+".log"),
		env: append(os.Environ(), "KUBECONFIG="+agentKubeconfig(t, c), "NODE_NAME="+node.Name, "POD_NAMESPACE="+ferryNamespace, "NODE_IP="+node.Net.IP),
		args: []string{"--net=/var/run/netns/" + node.Net.Namespace, "--", agentBinary,
			"--kubelet-root=" + node.KubeletDir, "--state-dir=" + filepath.Join(c.Dir, "nodes", node.Name, "ferry"),
			"--metrics-bind-address=" + node.Net.IP + ":9810", "--health-probe-bind-address=" + node.Net.IP + ":9811",
			"--retry-backoff=1s", "--progress-interval=200ms", "--grace-period=10s", "--zap-log-level=debug"}}
	a.args = append(a.args, extra...)
	a.start()
	t.Cleanup(func() { _, _ = a.stop() })
	return a
}

func (a *agentProc) start() {
	a.t.Helper()
	f, err := os.OpenFile(a.logs, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	require.NoError(a.t, err)
	defer f.Close()
	a.cmd = exec.Command("nsenter", a.args...)
	a.cmd.Env, a.cmd.Stdout, a.cmd.Stderr = a.env, f, f
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(a.t, a.cmd.Start())
	a.done = make(chan error, 1)
	go func(cmd *exec.Cmd, done chan error) { done <- cmd.Wait() }(a.cmd, a.done)
	testenv.Eventually(a.t, "agent on "+a.node.Name+" ready", 30*time.Second, func() bool {
		resp, err := http.Get("http://" + a.node.Net.IP + ":9811/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// kill is kill -9.
func (a *agentProc) kill() {
	a.t.Helper()
	require.NoError(a.t, a.cmd.Process.Kill())
	<-a.done
	a.cmd = nil
}

// stop is SIGTERM; it returns the exit error and how long stopping took.
func (a *agentProc) stop() (time.Duration, error) {
	if a.cmd == nil {
		return 0, nil
	}
	start := time.Now()
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case err = <-a.done:
	case <-time.After(30 * time.Second):
		_ = a.cmd.Process.Kill()
		err = <-a.done
		err = fmt.Errorf("did not stop within 30s after SIGTERM (killed): %v", err)
	}
	a.cmd = nil
	return time.Since(start), err
}

// metric reads one series' value from the agent's /metrics; labels must all
// match.
func (a *agentProc) metric(name string, labels map[string]string) float64 {
	a.t.Helper()
	resp, err := http.Get("http://" + a.node.Net.IP + ":9810/metrics")
	require.NoError(a.t, err)
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		ok := true
		for k, v := range labels {
			ok = ok && strings.Contains(line, fmt.Sprintf("%s=%q", k, v))
		}
		if ok {
			f, err := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
			require.NoError(a.t, err)
			return f
		}
	}
	return -1
}

func pvc(ns, name string, source *corev1.TypedLocalObjectReference, owner client.Object) *corev1.PersistentVolumeClaim {
	p := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To(cluster.StorageClass),
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
			DataSource:       source,
		},
	}
	if owner != nil {
		kind := "ReplicationDestination"
		if _, ok := owner.(*volsyncv1alpha1.ReplicationSource); ok {
			kind = "ReplicationSource"
		}
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: volsyncv1alpha1.GroupVersion.String(), Kind: kind,
			Name: owner.GetName(), UID: owner.GetUID(), Controller: ptr.To(true)}}
	}
	return p
}

// bound creates a PVC and returns its PV once bound.
func bound(t *testing.T, c *cluster.Cluster, claim *corev1.PersistentVolumeClaim) *corev1.PersistentVolume {
	t.Helper()
	pv, err := c.Bind(context.Background(), claim)
	require.NoError(t, err)
	return pv
}

// snapshotClaim cuts a VolumeSnapshot of a PVC, waits until it is ready and
// restores it into a new PVC owned by owner: the point-in-time copy a
// ReplicationSource with copyMethod Snapshot makes.
func snapshotClaim(t *testing.T, c *cluster.Cluster, ns, from, name string, owner client.Object) *corev1.PersistentVolume {
	t.Helper()
	require.NoError(t, c.Snapshot(context.Background(), ns, name, from))
	return bound(t, c, pvc(ns, name, &corev1.TypedLocalObjectReference{
		APIGroup: ptr.To("snapshot.storage.k8s.io"), Kind: "VolumeSnapshot", Name: name}, owner))
}

// volumeOf is the assignment's copy of a PV.
func volumeOf(pv *corev1.PersistentVolume) agentv1alpha1.Volume {
	return agentv1alpha1.Volume{PersistentVolumeName: pv.Name, Claim: pv.Spec.ClaimRef.Name, Driver: pv.Spec.CSI.Driver,
		VolumeHandle: pv.Spec.CSI.VolumeHandle}
}

// writeRandom writes n random bytes to path.
func writeRandom(t *testing.T, path string, n int64) {
	t.Helper()
	f, err := os.Create(path)
	require.NoError(t, err)
	_, err = io.CopyN(f, rand.Reader, n)
	require.NoError(t, err)
	require.NoError(t, f.Close())
}

// tree describes every entry under root by type, mode, owner, size, content
// hash, mtime, hard-link count and link target: what a replica must
// reproduce.
func tree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	require.NoError(t, filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if rel == "." {
			return nil
		}
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		desc := fmt.Sprintf("%v %d:%d", fi.Mode(), st.Uid, st.Gid)
		switch {
		case fi.Mode().IsRegular():
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			h := sha256.New()
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return err
			}
			// Link count: hard links must arrive as links, not copies.
			desc += fmt.Sprintf(" %d %x mtime=%d links=%d", fi.Size(), h.Sum(nil), fi.ModTime().UnixNano(), st.Nlink)
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			desc += " -> " + target
		}
		out[rel] = desc
		return nil
	}))
	return out
}

// agentKubeconfig installs the agent's ServiceAccount and RBAC exactly as
// deploy/nodeagent/rbac has them (generated from the markers) and returns
// a kubeconfig that acts as that ServiceAccount from the nodes' network:
// the agents in these tests have the permissions they ship with, no more.
func agentKubeconfig(t *testing.T, c *cluster.Cluster) string {
	t.Helper()
	path := filepath.Join(c.Dir, "kubeconfig-nodeagent")
	if _, err := os.Stat(path); err == nil {
		return path
	}
	root, err := testenv.RepoRoot()
	require.NoError(t, err)
	for _, f := range []string{"serviceaccount.yaml", "role.yaml", "bindings.yaml"} {
		raw, err := os.ReadFile(filepath.Join(root, "deploy", "nodeagent", "rbac", f))
		require.NoError(t, err)
		for _, doc := range strings.Split(string(raw), "\n---") {
			obj := &unstructured.Unstructured{}
			require.NoError(t, yaml.Unmarshal([]byte(doc), &obj.Object))
			if len(obj.Object) == 0 {
				continue
			}
			require.NoError(t, c.Client.Create(context.Background(), obj), "%s %s", f, obj.GetName())
		}
	}
	cfg, err := clientcmd.LoadFromFile(c.NetworkKubeconfig)
	require.NoError(t, err)
	for _, user := range cfg.AuthInfos {
		user.Impersonate = "system:serviceaccount:" + ferryNamespace + ":ferry-nodeagent"
	}
	require.NoError(t, clientcmd.WriteToFile(*cfg, path))
	return path
}
