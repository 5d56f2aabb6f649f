package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Real nodes: each node of a cluster started with Options.Kubelet runs the
// real kubelet and containerd (with runc and Debian's CNI plugins), the way
// a kind node is a container: its own network namespace (the Network's),
// its own mount namespace in which /var/lib/kubelet, /var/lib/containerd,
// /run/containerd, /var/log/pods, /etc/cni/net.d, /var/lib/ferry and
// /etc/kubernetes are the node's own directories, and its own cgroup
// subtree (ferry-<node>, kubelet's cgroupRoot) that teardown kills and
// removes. Pods get addresses from the node's pod range on a bridge and
// reach Services through the node's kube-proxy.
//
// The machines here run cgroup v1 and give root no CAP_SYS_RESOURCE:
// kubelet starts on v1 only with failCgroupV1: false, and containerd
// restricts containers' oom_score_adj to its own (no negative scores).

// cgroupControllers are the v1 hierarchies a node's subtree spans.
var cgroupControllers = []string{"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd"}

// cniBinDir is where Debian's containernetworking-plugins puts the plugins.
const cniBinDir = "/usr/lib/cni"

// realNode is what a node's kubelet and containerd need.
type realNode struct {
	node   Node
	root   string // the node's own directories
	mntns  string // bind-mounted mount namespace
	cgroup string // cgroup v1 path below each hierarchy's root
	podNet string // pod range, a /24
}

// nodeDirs are the node's own directories, bound over the host's paths in
// its mount namespace.
var nodeDirs = map[string]string{
	"containerd": "/var/lib/containerd", "run-containerd": "/run/containerd", "pod-logs": "/var/log/pods",
	"cni": "/etc/cni/net.d", "ferry": "/var/lib/ferry", "etc": "/etc/kubernetes", "netns": "/run/netns",
}

// startKubelets makes every node real: namespaces, cgroups, containerd with
// the images imported, kubelet registered; it returns when all are Ready.
func (c *Cluster) startKubelets(ctx context.Context, bin, images string) error {
	for i := range c.Nodes {
		n := &c.Nodes[i]
		rn := newRealNode(c.Dir, n.Name)
		rn.node, rn.podNet = *n, podRange(n.Net.IP)
		c.real = append(c.real, rn)
		if err := c.startRealNode(rn, bin, images); err != nil {
			return fmt.Errorf("cluster: node %s: %w", n.Name, err)
		}
	}
	for _, a := range c.real {
		for _, b := range c.real {
			if a != b {
				if err := Route(a.node.Net, b.podNet, b.node.Net.IP); err != nil {
					return err
				}
			}
		}
	}
	return waitFor(3*time.Minute, func() bool {
		for _, rn := range c.real {
			node := &corev1.Node{}
			if err := c.Client.Get(ctx, client.ObjectKey{Name: rn.node.Name}, node); err != nil || !nodeReady(node) {
				return false
			}
		}
		return true
	})
}

// newRealNode is where node name of the cluster in dir keeps its state.
func newRealNode(dir, name string) *realNode {
	root := filepath.Join(dir, "nodes", name, "root")
	return &realNode{node: Node{Name: name}, root: root, mntns: filepath.Join(root, "ns", "mnt"),
		cgroup: "ferry-" + strings.TrimPrefix(filepath.Base(dir), "ferry-cluster-") + "-" + name}
}

// podRange is a node's pod range, from the last octet of its address, so
// nodes on one Network never share one.
func podRange(nodeIP string) string {
	return fmt.Sprintf("10.244.%s.0/24", nodeIP[strings.LastIndex(nodeIP, ".")+1:])
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// startRealNode sets up one node and starts its containerd and kubelet.
func (c *Cluster) startRealNode(rn *realNode, bin, images string) error {
	if err := rn.makeCgroups(); err != nil {
		return err
	}
	if err := rn.makeMountNamespace(); err != nil {
		return err
	}
	if err := rn.writeConfigs(bin); err != nil {
		return err
	}
	if err := c.runInNode(rn, "containerd-"+rn.node.Name, filepath.Join(bin, "containerd"),
		"--config", "/etc/kubernetes/containerd.toml"); err != nil {
		return err
	}
	sock := filepath.Join(rn.root, "run-containerd", "containerd.sock")
	if err := waitFor(30*time.Second, func() bool { _, err := os.Stat(sock); return err == nil }); err != nil {
		return fmt.Errorf("containerd did not start: %w", err)
	}
	archives, err := filepath.Glob(filepath.Join(images, "*.tar"))
	if err != nil || len(archives) == 0 {
		return fmt.Errorf("no image archives in %s: run make images", images)
	}
	for _, a := range archives {
		if err := run("nsenter", "--mount="+rn.mntns, filepath.Join(bin, "ctr"), "--address", "/run/containerd/containerd.sock",
			"--namespace", "k8s.io", "images", "import", "--local", a); err != nil {
			return fmt.Errorf("import %s: %w", filepath.Base(a), err)
		}
	}
	return c.runInNode(rn, "kubelet-"+rn.node.Name, filepath.Join(bin, "kubelet"),
		"--config=/etc/kubernetes/kubelet.yaml", "--kubeconfig="+c.NetworkKubeconfig,
		"--hostname-override="+rn.node.Name, "--node-ip="+rn.node.Net.IP)
}

// runInNode runs a node component in the node's cgroup subtree and its
// mount and network namespaces.
func (c *Cluster) runInNode(rn *realNode, name, path string, args ...string) error {
	var join strings.Builder
	for _, ctl := range cgroupControllers {
		fmt.Fprintf(&join, "echo $$ > /sys/fs/cgroup/%s/%s/system/cgroup.procs && ", ctl, rn.cgroup)
	}
	script := join.String() + `net=$1 && shift && exec nsenter --mount="$0" --net="$net" -- "$@"`
	return c.run(name, "sh", append([]string{"-c", script, rn.mntns, "/run/netns/" + rn.node.Net.Namespace,
		"env", "PATH=" + filepath.Dir(path) + ":/usr/sbin:/usr/bin:/sbin:/bin", path}, args...)...)
}

// makeCgroups creates the node's subtree (and its system child, where its
// containerd and kubelet run) in every hierarchy.
func (rn *realNode) makeCgroups() error {
	for _, ctl := range cgroupControllers {
		for _, sub := range []string{"", "system"} {
			dir := filepath.Join("/sys/fs/cgroup", ctl, rn.cgroup, sub)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("cgroup: %w", err)
			}
			if ctl != "cpuset" {
				continue
			}
			// A v1 cpuset takes no task until it has cpus and mems.
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := os.ReadFile(filepath.Join(filepath.Dir(dir), f))
				if err == nil {
					err = os.WriteFile(filepath.Join(dir, f), v, 0)
				}
				if err != nil {
					return fmt.Errorf("cgroup %s: %w", f, err)
				}
			}
		}
	}
	return nil
}

// makeMountNamespace creates the node's mount namespace, pinned to a file:
// the host's mounts propagate in, the node's stay in. The kubelet root is
// the node's KubeletDir, shared so that what a privileged pod mounts there
// with Bidirectional propagation is seen by kubelet and the other pods.
func (rn *realNode) makeMountNamespace() error {
	nsDir := filepath.Dir(rn.mntns)
	for dir := range nodeDirs {
		if err := os.MkdirAll(filepath.Join(rn.root, dir), 0o755); err != nil {
			return fmt.Errorf("node dir: %w", err)
		}
	}
	if err := errors.Join(os.MkdirAll(nsDir, 0o755), os.MkdirAll(rn.node.KubeletDir, 0o750)); err != nil {
		return fmt.Errorf("node dir: %w", err)
	}
	// The namespace file must live on a private mount.
	if err := errors.Join(unix.Mount(nsDir, nsDir, "", unix.MS_BIND, ""),
		unix.Mount("", nsDir, "", unix.MS_PRIVATE, "")); err != nil {
		return fmt.Errorf("namespace dir: %w", err)
	}
	if err := os.WriteFile(rn.mntns, nil, 0o600); err != nil {
		return fmt.Errorf("namespace file: %w", err)
	}
	// The new namespace starts with a copy of every host mount, and the
	// host's / is private: a copy of another test's volume or network
	// namespace would stay here after the host unmounts it, holding its
	// loop device or namespace until this node stops. Only what the node
	// needs stays: nothing of other clusters' or tests' temporary
	// directories, no network namespace, no loop-device filesystem.
	clusterDir := filepath.Dir(filepath.Dir(filepath.Dir(rn.root)))
	script := fmt.Sprintf(`mount --make-rslave / && awk -v keep=%q '{ split($0, f, " - "); split(f[2], s, " "); m = $5; `+
		`if (((index(m, "/tmp/") == 1 || index(m, "/run/netns/") == 1) && index(m, keep "/") != 1 && m != keep) || s[2] ~ /^\/dev\/loop/) print m }' `+
		`/proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done`, clusterDir)
	script += " && mkdir -p /var/lib/kubelet && mount --bind \"$0\" /var/lib/kubelet && mount --make-rshared /var/lib/kubelet"
	args := []string{rn.node.KubeletDir}
	for dir, target := range nodeDirs {
		script += fmt.Sprintf(` && mkdir -p %s && mount --bind "$%d" %s`, target, len(args), target)
		args = append(args, filepath.Join(rn.root, dir))
	}
	return run("unshare", append([]string{"--mount=" + rn.mntns, "--propagation", "unchanged", "sh", "-c", script}, args...)...)
}

// writeConfigs writes containerd's and kubelet's configuration and the
// node's CNI network.
func (rn *realNode) writeConfigs(bin string) error {
	containerd := fmt.Sprintf(`version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins.'io.containerd.cri.v1.runtime']
  # root here lacks CAP_SYS_RESOURCE: no score below containerd's own.
  restrict_oom_score_adj = true
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = [%q]
  conf_dir = "/etc/cni/net.d"
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  BinaryName = %q
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = %q
`, cniBinDir, filepath.Join(bin, "runc"), PauseImage)
	kubelet := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
cgroupRoot: /%s
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
# The kubelet port is on the test network only; the apiserver (logs, exec)
# has no kubelet client certificate here.
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
staticPodPath: /etc/kubernetes/manifests
# The nodes share one disk: no evictions or image collection for its fill.
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
readOnlyPort: 0
healthzPort: 0
serializeImagePulls: false
`, rn.cgroup)
	cni := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "ferry", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "loopback"}]}
`, rn.podNet)
	files := map[string]string{
		"etc/containerd.toml": containerd, "etc/kubelet.yaml": kubelet, "cni/10-ferry.conflist": cni,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(rn.root, name), []byte(data), 0o644); err != nil {
			return fmt.Errorf("config: %w", err)
		}
	}
	return os.MkdirAll(filepath.Join(rn.root, "etc", "manifests"), 0o755)
}

// startNodeServices starts what runs on the nodes: kubelets (real nodes),
// kube-proxy (on a network) and the CSI node plugins as pods (real nodes).
func (c *Cluster) startNodeServices(ctx context.Context, bin string, o Options) error {
	var err error
	if o.Kubelet {
		if c.NetworkKubeconfig, err = c.networkKubeconfig(o.Network); err != nil {
			return err
		}
		if err := c.startKubelets(ctx, bin, o.Images); err != nil {
			return err
		}
	}
	if o.Network != nil {
		if err := c.startKubeProxies(bin, o.Network); err != nil {
			return err
		}
	}
	if o.Kubelet {
		return c.startNodePlugins(ctx)
	}
	return nil
}
