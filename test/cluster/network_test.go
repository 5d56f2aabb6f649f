package cluster_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/test/cluster"
)

// serveIn runs a TCP server in a node's namespace that greets each
// connection, and returns its port.
func serveIn(t *testing.T, n cluster.Node, greeting string) int {
	t.Helper()
	var ln net.Listener
	require.NoError(t, cluster.InNamespace(n.Net.Namespace, func() (err error) {
		ln, err = net.Listen("tcp", n.Net.IP+":0")
		return err
	}))
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, greeting)
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// dialFrom connects from a node's namespace and returns what the server said.
func dialFrom(n cluster.Node, addr string) (string, error) {
	var c net.Conn
	if err := cluster.InNamespace(n.Net.Namespace, func() (err error) {
		c, err = net.DialTimeout("tcp", addr, time.Second)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

// TestServiceRoutesAcrossClusters: two clusters on one machine with their
// node networks joined; a Service without selector and a hand-made
// EndpointSlice in cluster A route, through the real kube-proxy, to a
// server in node B's namespace, from node A and from cluster B's node, by
// ClusterIP and, once the Service is a LoadBalancer with an ingress address,
// by that address too.
func TestServiceRoutesAcrossClusters(t *testing.T) {
	testenv.NeedRoot(t)
	ctx := context.Background()
	network, err := cluster.NewNetwork("ft", "10.250.0")
	require.NoError(t, err)
	a, err := cluster.Start(ctx, cluster.Options{Network: network, ServiceCIDR: "10.96.0.0/24",
		LoadBalancerCIDR: "10.98.0.0/24", Log: testr.New(t)})
	require.NoError(t, err)
	b, err := cluster.Start(ctx, cluster.Options{Network: network, ServiceCIDR: "10.97.0.0/24", Nodes: []string{"b1"}, Log: testr.New(t)})
	require.NoError(t, err)
	defer func() {
		if t.Failed() {
			t.Log(a.Logs(20))
		}
		assert.NoError(t, a.Stop())
		assert.NoError(t, b.Stop())
		assert.NoError(t, network.Close())
		out, _ := exec.Command("ip", "netns", "list").CombinedOutput()
		assert.NotContains(t, string(out), "ft-", "network namespaces left behind")
		assert.Empty(t, append(testenv.Processes(t, a.Dir), testenv.Processes(t, b.Dir)...), "processes left behind")
		out, _ = exec.Command("ip", "link", "show", "fbr-ft").CombinedOutput()
		assert.Contains(t, string(out), "does not exist", "bridge left behind")
	}()
	require.NoError(t, cluster.Connect(a, b))

	nodeA, nodeB := a.Nodes[0], a.Nodes[1]
	port := serveIn(t, nodeB, "hello from node-b")
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "default"}, Spec: corev1.ServiceSpec{
		Ports: []corev1.ServicePort{{Name: "ssh", Port: 22, TargetPort: intstr.FromInt32(int32(port)), Protocol: corev1.ProtocolTCP}}}}
	require.NoError(t, a.Client.Create(ctx, svc))
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "echo-1", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "echo"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{nodeB.Net.IP},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}, NodeName: ptr.To(nodeB.Name)}},
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("ssh"), Port: ptr.To(int32(port)), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	require.NoError(t, a.Client.Create(ctx, slice))
	require.NoError(t, a.Client.Get(ctx, client.ObjectKeyFromObject(svc), svc))
	reachable(t, fmt.Sprintf("%s:22", svc.Spec.ClusterIP), nodeA, b.Nodes[0])

	// What a load-balancer controller (MetalLB, a cloud) does: make it a
	// LoadBalancer and publish an ingress address.
	svc.Spec.Type = corev1.ServiceTypeLoadBalancer
	require.NoError(t, a.Client.Update(ctx, svc))
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "10.98.0.10"}}
	require.NoError(t, a.Client.Status().Update(ctx, svc))
	reachable(t, "10.98.0.10:22", nodeA, b.Nodes[0])
}

// reachable polls, with a deadline, until addr answers from each node with
// node B's greeting.
func reachable(t *testing.T, addr string, from ...cluster.Node) {
	t.Helper()
	for _, n := range from {
		var got string
		var err error
		testenv.Eventually(t, addr+" to answer from "+n.Name, 30*time.Second, func() bool {
			got, err = dialFrom(n, addr)
			return err == nil && got != ""
		}, func() string { return fmt.Sprintf("last: %q, %v", got, err) })
		assert.Equal(t, "hello from node-b", got, "%s from %s", addr, n.Name)
	}
}
