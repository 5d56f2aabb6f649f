// Package cluster starts a Kubernetes "cluster" on this machine for Ferry's
// integration tests and demo, from real parts: etcd and kube-apiserver
// (through internal/testenv), kube-controller-manager, the VolumeSnapshot
// CRDs, the local CSI driver (test/csidriver) serving each simulated node on
// its own kubelet-style plugin socket, and the upstream CSI sidecars
// (external-provisioner, snapshot-controller, csi-snapshotter,
// external-attacher) as processes. It creates Node and CSINode objects for
// the simulated nodes, the StorageClasses and VolumeSnapshotClasses the
// spec's examples name, and tears everything down without leaving
// processes, mounts or loop devices.
package cluster

import (
	"k8s.io/apimachinery/pkg/util/wait"

	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/go-logr/logr"

	"github.com/ferrysync/ferry/internal/testenv/apiserver"
)

// Options say what cluster to start.
type Options struct {
	// Nodes are the simulated nodes' names (default node-a, node-b).
	Nodes []string
	// ServiceCIDR is the apiserver's service range; clusters side by side
	// need different ones (default 10.0.0.0/24).
	ServiceCIDR string
	// LoadBalancerCIDR is where this cluster's load-balancer ingress
	// addresses come from (with a Network; default: none routed).
	LoadBalancerCIDR string
	// Network, when set, puts each node in its own network namespace on it
	// and runs the real kube-proxy (nftables mode) there, so Service
	// addresses route to their endpoints; the apiserver then also listens
	// on the network's host address.
	Network *Network
	// Kubelet, with a Network, makes the nodes real: each runs kubelet and
	// containerd in its own mount namespace and cgroup subtree, with the
	// images of Images imported (see kubelet.go). Node objects, CSINodes
	// and the CSI node plugins then come from kubelet and from pods.
	Kubelet bool
	// Images holds the image archives make images builds (with Kubelet).
	Images string
	// Profiles are strict driver profiles (driver.Profiles) to run as
	// drivers of their own beside the default two, each with a
	// StorageClass and a VolumeSnapshotClass (ProfileClass,
	// ProfileSnapshotClass).
	Profiles []string
	// Log receives the steps.
	Log logr.Logger
}

// Node is one simulated node.
type Node struct {
	// Name of the Node object.
	Name string
	// KubeletDir is the node's kubelet root; plugin sockets are under
	// plugins/<driver>/csi.sock.
	KubeletDir string
	// Net is the node's network namespace and address (with a Network).
	Net NodeNet

	sockets map[string]string // driver → its node plugin's socket
}

// PluginSocket is where the node's instance of a driver listens. Ferry's
// agent does not guess it: it finds it as kubelet does, through the
// driver's registration socket in RegistrationDir.
func (n Node) PluginSocket(driverName string) string { return n.sockets[driverName] }

// RegistrationDir is the node's kubelet plugin registration directory,
// where node plugins announce their name and socket.
func (n Node) RegistrationDir() string { return filepath.Join(n.KubeletDir, "plugins_registry") }

// Cluster is a running cluster.
type Cluster struct {
	*apiserver.Env
	// Dir holds the cluster's state, sockets and logs.
	Dir string
	// Nodes are the simulated nodes.
	Nodes []Node
	// ServiceCIDR is the apiserver's service range.
	ServiceCIDR string
	// LoadBalancerCIDR is the range load-balancer ingress addresses are
	// taken from; it is routed like the service range.
	LoadBalancerCIDR string
	// NetworkKubeconfig reaches the apiserver from the nodes' network
	// namespaces (with a Network): what node components there use.
	NetworkKubeconfig string
	// Drivers are the CSI drivers it runs.
	Drivers []Driver

	log     logr.Logger
	real    []*realNode
	kubelet bool
	cancel  context.CancelFunc
	drivers chan error
	nDriver int
	procs   []*process
}

// Start starts a cluster; Stop it when done.
func Start(ctx context.Context, o Options) (_ *Cluster, err error) {
	if len(o.Nodes) == 0 {
		o.Nodes = []string{"node-a", "node-b"}
	}
	if o.ServiceCIDR == "" {
		o.ServiceCIDR = "10.0.0.0/24"
	}
	if o.Log.GetSink() == nil {
		o.Log = logr.Discard()
	}
	bin := os.Getenv("KUBEBUILDER_ASSETS")
	if bin == "" {
		return nil, errors.New("cluster: KUBEBUILDER_ASSETS is not set: run make test, which builds bin/testenv")
	}
	dir, err := os.MkdirTemp("", "ferry-cluster-")
	if err != nil {
		return nil, fmt.Errorf("cluster: state dir: %w", err)
	}
	envOpts, err := apiServerOptions(dir, bin, o)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	env, err := apiserver.Start(envOpts...)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	dctx, cancel := context.WithCancel(context.Background())
	c := &Cluster{Env: env, Dir: dir, ServiceCIDR: o.ServiceCIDR, LoadBalancerCIDR: o.LoadBalancerCIDR, log: o.Log, cancel: cancel,
		drivers: make(chan error, 16), kubelet: o.Kubelet}
	if c.Drivers, err = clusterDrivers(o.Profiles); err != nil {
		_ = c.Stop()
		return nil, err
	}
	defer func() {
		if err != nil {
			// What Start did so far; the error that stopped it is the news.
			_ = c.Stop()
		}
	}()
	if err := c.addNodes(o); err != nil {
		return nil, err
	}
	if err := c.startDrivers(dctx); err != nil {
		return nil, err
	}
	if err := c.startComponents(bin); err != nil {
		return nil, err
	}
	if err := c.createObjects(ctx); err != nil {
		return nil, err
	}
	if !c.kubelet {
		if err := c.heartbeat(dctx); err != nil {
			return nil, err
		}
	}
	if err := c.startNodeServices(ctx, bin, o); err != nil {
		return nil, err
	}
	return c, nil
}

// apiServerOptions are the apiserver's flags for o: the snapshot CRDs,
// the Service range, reachable from the network's nodes, and what real
// kubelets need.
func apiServerOptions(dir, bin string, o Options) ([]apiserver.Option, error) {
	envOpts := []apiserver.Option{apiserver.WithCRDs(filepath.Join(bin, "snapshot-crds")),
		apiserver.WithAPIServerFlag("service-cluster-ip-range", o.ServiceCIDR)}
	if o.Network != nil {
		envOpts = append(envOpts, apiserver.WithAPIServerFlag("bind-address", "0.0.0.0"))
	}
	if o.Kubelet {
		if o.Network == nil || o.Images == "" {
			return nil, errors.New("cluster: real nodes need a Network and Images")
		}
		opts, err := realNodeAPIServer(dir, o)
		if err != nil {
			return nil, err
		}
		envOpts = append(envOpts, opts...)
	}
	return envOpts, nil
}

// addNodes gives each node its directory and, on a network, its namespace
// with routes to the cluster's Services.
func (c *Cluster) addNodes(o Options) error {
	for _, n := range o.Nodes {
		node := Node{Name: n, KubeletDir: filepath.Join(c.Dir, "nodes", n, "kubelet"), sockets: map[string]string{}}
		for _, d := range c.Drivers {
			node.sockets[d.Name] = d.Profile.SocketPath(node.KubeletDir, d.Name)
		}
		if o.Network != nil {
			var err error
			if node.Net, err = o.Network.addNode(n); err != nil {
				return err
			}
			for _, cidr := range c.routed() {
				if err := Route(node.Net, cidr, ""); err != nil {
					return err
				}
			}
		}
		c.Nodes = append(c.Nodes, node)
	}
	return nil
}

// routed are the ranges that reach this cluster's Services: kube-proxy on
// the node that receives the traffic forwards it to an endpoint.
func (c *Cluster) routed() []string {
	if c.LoadBalancerCIDR == "" {
		return []string{c.ServiceCIDR}
	}
	return []string{c.ServiceCIDR, c.LoadBalancerCIDR}
}

// startComponents runs kube-controller-manager and the sidecars.
func (c *Cluster) startComponents(bin string) error {
	kc := "--kubeconfig=" + c.Kubeconfig
	kcm := []string{"kube-controller-manager", kc, "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false",
		"--use-service-account-credentials=false", "--controllers=*,-serviceaccount-token"}
	if c.kubelet {
		// Pods verify the apiserver against the CA this publishes.
		kcm = append(kcm, "--root-ca-file="+filepath.Join(c.pkiDir(), "ca.crt"))
	}
	var scheduler [][]string
	if c.kubelet {
		// Real nodes run pods, DaemonSets' among them: they need placing.
		scheduler = append(scheduler, []string{"kube-scheduler", kc, "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false"})
	}
	components := [][]string{kcm, {"snapshot-controller", kc, "--leader-election=false"}}
	for _, d := range c.Drivers {
		sock := "--csi-address=" + c.controllerSocket(d.Name)
		components = append(components, []string{"csi-provisioner", kc, sock, "--leader-election=false",
			"--default-fstype=ext4", "--extra-create-metadata"})
		if len(d.SnapshotClasses) > 0 {
			components = append(components, []string{"csi-snapshotter", kc, sock, "--leader-election=false", "--extra-create-metadata"})
		}
		if d.Profile.AttachRequired {
			components = append(components, []string{"csi-attacher", kc, sock, "--leader-election=false"})
		}
	}
	components = append(components, scheduler...)
	logs := filepath.Join(c.Dir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return fmt.Errorf("cluster: log dir: %w", err)
	}
	for i, args := range components {
		if err := c.run(fmt.Sprintf("%s-%d", args[0], i), filepath.Join(bin, args[0]), args[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// Stop ends every process and driver and removes the cluster's state. It
// reports what could not be cleaned up.
func (c *Cluster) Stop() error {
	var errs []error
	for _, p := range c.procs {
		stopProcess(p)
	}
	errs = append(errs, c.stopRealNodes())
	c.cancel()
	for i := 0; i < c.nDriver; i++ {
		if err := <-c.drivers; err != nil {
			errs = append(errs, err)
		}
	}
	if keep := os.Getenv("FERRY_TEST_LOGS"); keep != "" {
		// For a person debugging: keep the components' logs.
		errs = append(errs, os.CopyFS(filepath.Join(keep, filepath.Base(c.Dir)), os.DirFS(filepath.Join(c.Dir, "logs"))))
	}
	errs = append(errs, c.Env.Stop(), os.RemoveAll(c.Dir))
	return errors.Join(errs...)
}

// Logs returns the tail of every component's log, for test failures.
func (c *Cluster) Logs(lines int) string {
	files, _ := filepath.Glob(filepath.Join(c.Dir, "logs", "*.log"))
	out := ""
	for _, f := range files {
		out += fmt.Sprintf("==> %s <==\n%s\n", filepath.Base(f), tail(f, lines))
	}
	return out
}

func waitFor(timeout time.Duration, ok func() bool) error {
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, timeout, true,
		func(context.Context) (bool, error) { return ok(), nil })
	if err != nil {
		return fmt.Errorf("cluster: timed out waiting: %w", err)
	}
	return nil
}
