// Package harness runs Ferry's own programs for integration tests, as
// processes on the simulated nodes of a test/cluster: the node agent (in a
// node's network namespace and the host's mount namespace, as a DaemonSet
// pod with hostNetwork and bidirectional mount propagation sees the node)
// and the controller, each with exactly the RBAC that deploy/ ships. It also
// describes volume trees the way a replica must reproduce them.
package harness

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/pkg/controller/assign"
	"github.com/ferrysync/ferry/test/cluster"
)

// T is what the harness needs of a test: *testing.T satisfies it, and so
// can a program that plays one (the demo), failing by panicking after its
// cleanups.
type T interface {
	require.TestingT
	Helper()
	Fatal(args ...any)
	Cleanup(func())
}

// Namespace is Ferry's namespace in the tests, as deploy/ names it.
const Namespace = "ferry-system"

// Binaries are Ferry's programs, built once for a test package.
type Binaries struct {
	// Dir holds nodeagent, ferry-helper (beside it, as the image ships
	// them) and controller.
	Dir string
}

// Build compiles the agent, its helper and the controller into a new
// temporary directory; Remove it when done.
func Build() (*Binaries, error) {
	dir, err := os.MkdirTemp("", "ferry-bin-")
	if err != nil {
		return nil, fmt.Errorf("harness: bin dir: %w", err)
	}
	root, err := testenv.RepoRoot()
	if err != nil {
		return nil, err
	}
	build := exec.Command("go", "build", "-o", dir+"/", "./cmd/nodeagent", "./cmd/ferry-helper", "./cmd/controller", "./cmd/kubectl-ferry")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("harness: build Ferry: %w\n%s", err, out)
	}
	return &Binaries{Dir: dir}, nil
}

// Remove deletes the binaries.
func (b *Binaries) Remove() { os.RemoveAll(b.Dir) }

// Proc is one of Ferry's programs running as a process.
type Proc struct {
	t     T
	name  string
	path  string
	args  []string
	env   []string
	logs  string
	ready string // URL of /readyz
	cmd   *exec.Cmd
	done  chan error
	// Metrics is the URL of its /metrics.
	Metrics string
}

// StartAgent runs the node agent of node, acting as the ferry-nodeagent
// ServiceAccount; extra flags are appended. It is stopped when the test
// ends.
func (b *Binaries) StartAgent(t T, c *cluster.Cluster, node cluster.Node, extra ...string) *Proc {
	t.Helper()
	kc := AgentKubeconfig(t, c, node.Name)
	// The agent's own temp dir, so a test can count what it leaves there
	// while other packages' tests use the host's.
	tmp := filepath.Join(c.Dir, "nodes", node.Name, "tmp")
	require.NoError(t, os.MkdirAll(tmp, 0o700))
	p := &Proc{t: t, name: "nodeagent-" + node.Name, path: "nsenter",
		logs:    filepath.Join(c.Dir, "logs", "nodeagent-"+node.Name+".log"),
		ready:   "http://" + node.Net.IP + ":9811/readyz",
		Metrics: "http://" + node.Net.IP + ":9810/metrics",
		env:     append(os.Environ(), "KUBECONFIG="+kc, "NODE_NAME="+node.Name, "POD_NAMESPACE="+Namespace, "NODE_IP="+node.Net.IP, "TMPDIR="+tmp),
		args: []string{"--net=/var/run/netns/" + node.Net.Namespace, "--", filepath.Join(b.Dir, "nodeagent"),
			"--kubelet-root=" + node.KubeletDir, "--state-dir=" + filepath.Join(c.Dir, "nodes", node.Name, "ferry"),
			"--metrics-bind-address=" + node.Net.IP + ":9810", "--health-probe-bind-address=" + node.Net.IP + ":9811",
			"--retry-backoff=1s", "--progress-interval=200ms", "--grace-period=10s", "--zap-log-level=debug",
			"--ssh-port-range=30500-30599", "--ssh-keepalive=2s"}}
	p.args = append(p.args, extra...)
	p.Start()
	t.Cleanup(func() { _, _ = p.Stop() })
	return p
}

// Shipped are the controller's flags as shipped (its defaults), which a
// scale run passes after the tests' fast ones: it must measure the
// product's load, not a test's.
var Shipped = []string{"--poll-interval=2s", "--recheck-interval=30s", "--key-refresh-interval=5m", "--retry-after=1m",
	"--copy-trigger-timeout=10m", "--zap-log-level=info"}

// StartController runs the controller on the host, acting as the
// ferry-controller ServiceAccount, with fast polls for tests; extra flags
// are appended. It is stopped when the test ends.
func (b *Binaries) StartController(t T, c *cluster.Cluster, port int, extra ...string) *Proc {
	t.Helper()
	kc := Kubeconfig(t, c, "controller", "ferry-controller")
	addr := "127.0.0.1:" + strconv.Itoa(port)
	probe := "127.0.0.1:" + strconv.Itoa(port+1)
	p := &Proc{t: t, name: "controller", path: filepath.Join(b.Dir, "controller"),
		logs:    filepath.Join(c.Dir, "logs", fmt.Sprintf("controller-%d.log", port)),
		ready:   "http://" + probe + "/readyz",
		Metrics: "http://" + addr + "/metrics",
		env:     append(os.Environ(), "KUBECONFIG="+kc),
		args: []string{"--namespace=" + Namespace, "--metrics-bind-address=" + addr, "--health-probe-bind-address=" + probe,
			"--leader-elect=false", "--poll-interval=250ms", "--recheck-interval=2s", "--key-refresh-interval=2s", "--retry-after=5s", "--copy-trigger-timeout=3s", "--zap-log-level=debug"}}
	p.args = append(p.args, extra...)
	p.Start()
	t.Cleanup(func() { _, _ = p.Stop() })
	return p
}

// Start starts the process (again) and waits until it is ready.
func (p *Proc) Start() {
	p.t.Helper()
	p.StartWith()
}

// StartWith starts the process (again) with extra flags for this run only
// (a later flag wins over the usual one) and waits until it is ready.
func (p *Proc) StartWith(extra ...string) {
	p.t.Helper()
	f, err := os.OpenFile(p.logs, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	require.NoError(p.t, err)
	defer f.Close()
	p.cmd = exec.Command(p.path, append(slices.Clone(p.args), extra...)...)
	p.cmd.Env, p.cmd.Stdout, p.cmd.Stderr = p.env, f, f
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(p.t, p.cmd.Start())
	p.done = make(chan error, 1)
	go func(cmd *exec.Cmd, done chan error) { done <- cmd.Wait() }(p.cmd, p.done)
	testenv.Eventually(p.t, p.name+" ready", 30*time.Second, func() bool {
		resp, err := http.Get(p.ready)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// Logs returns what the process has written so far.
func (p *Proc) Logs() string {
	p.t.Helper()
	raw, err := os.ReadFile(p.logs)
	require.NoError(p.t, err)
	return string(raw)
}

// Pid is the running process's id (0 when stopped).
func (p *Proc) Pid() int {
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Kill is kill -9.
func (p *Proc) Kill() {
	p.t.Helper()
	require.NoError(p.t, p.cmd.Process.Kill())
	<-p.done
	p.cmd = nil
}

// Stop is SIGTERM; it returns the exit error and how long stopping took.
func (p *Proc) Stop() (time.Duration, error) { return p.StopWithin(30 * time.Second) }

// StopWithin is Stop for a process given limit to exit (one whose grace
// period is longer than Stop's 30 s).
func (p *Proc) StopWithin(limit time.Duration) (time.Duration, error) {
	if p.cmd == nil {
		return 0, nil
	}
	start := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case err = <-p.done:
	case <-time.After(limit):
		_ = p.cmd.Process.Kill()
		err = errors.Join(<-p.done, fmt.Errorf("did not stop within %s after SIGTERM (killed)", limit))
	}
	p.cmd = nil
	return time.Since(start), err
}

// Kubeconfig installs a component's ServiceAccount and RBAC exactly as
// deploy/<component>/rbac has them (generated from the markers) and returns
// a kubeconfig that acts as that ServiceAccount from the nodes' network:
// Ferry's programs run in the tests with the permissions they ship with.
func Kubeconfig(t T, c *cluster.Cluster, component, serviceAccount string) string {
	t.Helper()
	path := filepath.Join(c.Dir, "kubeconfig-"+component)
	if _, err := os.Stat(path); err == nil {
		return path
	}
	root, err := testenv.RepoRoot()
	require.NoError(t, err)
	dir := filepath.Join(root, "deploy", component, "rbac")
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	require.NoError(t, err)
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		raw, err := os.ReadFile(f)
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
	from := c.NetworkKubeconfig
	if from == "" { // a cluster without a node network
		from = c.Kubeconfig
	}
	cfg, err := clientcmd.LoadFromFile(from)
	require.NoError(t, err)
	for _, user := range cfg.AuthInfos {
		user.Impersonate = "system:serviceaccount:" + Namespace + ":" + serviceAccount
	}
	require.NoError(t, clientcmd.WriteToFile(*cfg, path))
	return path
}

// NodeNameExtra is the user-info extra a pod's bound ServiceAccount token
// carries: the name of the node the pod runs on.
const NodeNameExtra = "authentication.kubernetes.io/node-name"

// AgentKubeconfig is the node agent's kubeconfig for node: the
// ferry-nodeagent ServiceAccount with the node name its pod's bound token
// would carry, which the own-node admission policy checks.
func AgentKubeconfig(t T, c *cluster.Cluster, node string) string {
	t.Helper()
	path := filepath.Join(c.Dir, "kubeconfig-nodeagent-"+node)
	cfg, err := clientcmd.LoadFromFile(Kubeconfig(t, c, "nodeagent", "ferry-nodeagent"))
	require.NoError(t, err)
	for _, user := range cfg.AuthInfos {
		user.ImpersonateUserExtra = map[string][]string{NodeNameExtra: {node}}
	}
	require.NoError(t, clientcmd.WriteToFile(*cfg, path))
	return path
}

// OnVolume mounts a bound claim's volume on the host through the first
// node's CSI plugin, under work (read-only when asked), runs fn on its
// root and unmounts it: how tests and the demo look at a volume's bytes.
// As kubelet would, it passes the PV's node-stage Secret and, for a driver
// that requires attach, attaches the volume to the node for the time
// (an attachment of its own, which nothing else may be using then).
func OnVolume(t T, c *cluster.Cluster, ns, claim, work string, readOnly bool, fn func(dir string)) {
	t.Helper()
	ctx := context.Background()
	pvc := &corev1.PersistentVolumeClaim{}
	require.NoError(t, c.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: claim}, pvc))
	pv := &corev1.PersistentVolume{}
	require.NoError(t, c.Client.Get(ctx, client.ObjectKey{Name: pvc.Spec.VolumeName}, pv))
	m := c.Nodes[0].Volume(pv.Spec.CSI.Driver, pv.Spec.CSI.VolumeHandle)
	m.ReadOnly = readOnly
	if ref := pv.Spec.CSI.NodeStageSecretRef; ref != nil {
		sec := &corev1.Secret{}
		require.NoError(t, c.Client.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, sec))
		m.StageSecrets = map[string]string{}
		for k, v := range sec.Data {
			m.StageSecrets[k] = string(v)
		}
	}
	if required, err := assign.AttachRequired(ctx, c.Client, pv.Spec.CSI.Driver); err != nil || required {
		require.NoError(t, err)
		var detach func()
		m.PublishContext, detach = attachForTest(t, c.Client, pv, c.Nodes[0].Name)
		defer detach()
	}
	dir, unmount, err := cluster.MountVolume(ctx, m, work)
	require.NoError(t, err, "mount claim %s/%s", ns, claim)
	defer func() { require.NoError(t, unmount(), "unmount claim %s/%s", ns, claim) }()
	fn(dir)
}

// ExamplePath is the path of one of the spec's examples (examples/volsync),
// which tests and the demo apply as written.
func ExamplePath(t T, file string) string {
	t.Helper()
	root, err := testenv.RepoRoot()
	require.NoError(t, err)
	return filepath.Join(root, "examples", "volsync", file)
}

// Example reads one of the spec's examples into obj; a field obj does not
// know fails.
func Example(t T, file string, obj client.Object) {
	t.Helper()
	raw, err := os.ReadFile(ExamplePath(t, file))
	require.NoError(t, err)
	require.NoError(t, yaml.UnmarshalStrict(raw, obj))
}

// WriteRandom writes n random bytes to path.
func WriteRandom(t T, path string, n int64) {
	t.Helper()
	f, err := os.Create(path)
	require.NoError(t, err)
	_, err = io.CopyN(f, rand.Reader, n)
	require.NoError(t, err)
	require.NoError(t, f.Close())
}

// Tree describes every entry under root by type, mode, owner, size, content
// hash, mtime, hard-link count and link target: what a replica must
// reproduce.
func Tree(t T, root string) map[string]string {
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
