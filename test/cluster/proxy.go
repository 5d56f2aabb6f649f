package cluster

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// clusterCIDR is the pod range kube-proxy is told; no node address is in it,
// so replies to other clusters' nodes are not masqueraded onto other paths.
const clusterCIDR = "10.244.0.0/16"

// startKubeProxies gives each Node its address and runs the real kube-proxy
// in each node's namespace, reaching the apiserver on the network.
func (c *Cluster) startKubeProxies(bin string, network *Network) error {
	kubeconfig, err := c.networkKubeconfig(network)
	if err != nil {
		return err
	}
	c.NetworkKubeconfig = kubeconfig
	ctx := context.Background()
	for _, n := range c.Nodes {
		if c.kubelet {
			// A real kubelet reports its own address.
			if err := c.runKubeProxy(bin, kubeconfig, n); err != nil {
				return err
			}
			continue
		}
		node := &corev1.Node{}
		if err := c.Client.Get(ctx, client.ObjectKey{Name: n.Name}, node); err != nil {
			return fmt.Errorf("cluster: get node %s: %w", n.Name, err)
		}
		node.Status.Addresses = []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: n.Net.IP}, {Type: corev1.NodeHostName, Address: n.Name}}
		if err := c.Client.Status().Update(ctx, node); err != nil {
			return fmt.Errorf("cluster: set node %s address: %w", n.Name, err)
		}
		if err := c.runKubeProxy(bin, kubeconfig, n); err != nil {
			return err
		}
	}
	return nil
}

// runKubeProxy runs kube-proxy in a node's network namespace. Not through
// `ip netns exec`: that gives the process a mount namespace of its own, a
// copy of every host mount of the moment, and the copy of another test's
// volume there would hold its loop device until kube-proxy exits.
func (c *Cluster) runKubeProxy(bin, kubeconfig string, n Node) error {
	return c.run("kube-proxy-"+n.Name, "nsenter", "--net=/var/run/netns/"+n.Net.Namespace, "--",
		filepath.Join(bin, "kube-proxy"), "--kubeconfig="+kubeconfig, "--hostname-override="+n.Name,
		"--proxy-mode=nftables", "--cluster-cidr="+clusterCIDR, "--conntrack-max-per-core=0")
}

// networkKubeconfig writes a kubeconfig that reaches the apiserver at the
// network's host address (its serving certificate names only loopback, so
// it skips server verification: test networks only).
func (c *Cluster) networkKubeconfig(network *Network) (string, error) {
	cfg, err := clientcmd.LoadFromFile(c.Kubeconfig)
	if err != nil {
		return "", fmt.Errorf("cluster: read kubeconfig: %w", err)
	}
	for _, cl := range cfg.Clusters {
		u, err := url.Parse(cl.Server)
		if err != nil {
			return "", fmt.Errorf("cluster: server URL: %w", err)
		}
		u.Host = network.HostIP() + ":" + u.Port()
		cl.Server = u.String()
		cl.CertificateAuthorityData, cl.CertificateAuthority = nil, ""
		cl.InsecureSkipTLSVerify = true
	}
	path := filepath.Join(c.Dir, "kubeconfig-network")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return "", fmt.Errorf("cluster: write kubeconfig: %w", err)
	}
	return path, nil
}

// Connect routes each cluster's service and load-balancer ranges from the
// other's nodes through one of its own nodes, as a multi-cluster network
// add-on would, so a ClusterIP or load-balancer address of one cluster is
// reachable from the other.
func Connect(a, b *Cluster) error {
	for _, pair := range [][2]*Cluster{{a, b}, {b, a}} {
		from, to := pair[0], pair[1]
		for _, n := range from.Nodes {
			for _, cidr := range to.routed() {
				if err := Route(n.Net, cidr, to.Nodes[0].Net.IP); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
