package cluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Network is a flat node network that clusters on this machine share, as
// clusters joined by a network add-on would be: a bridge on the host and a
// network namespace per simulated node, each with one address on the bridge.
// Traffic stays on this machine: namespaces have no default route.
type Network struct {
	name   string
	prefix string // first three octets, e.g. "10.250.0"

	mu    sync.Mutex
	next  int
	nodes []string // namespaces
}

// NewNetwork creates the bridge (host address prefix.1/24).
func NewNetwork(name, prefix string) (*Network, error) {
	n := &Network{name: name, prefix: prefix, next: 11}
	_ = ip("link", "del", n.bridge()) // left over by a killed run
	if err := ip("link", "add", n.bridge(), "type", "bridge"); err != nil {
		return nil, err
	}
	if err := errors.Join(ip("addr", "add", n.HostIP()+"/24", "dev", n.bridge()), ip("link", "set", n.bridge(), "up")); err != nil {
		_ = n.Close()
		return nil, err
	}
	return n, nil
}

func (n *Network) bridge() string { return "fbr-" + n.name }

// HostIP is the host's address on the network, where the apiservers listen.
func (n *Network) HostIP() string { return n.prefix + ".1" }

// NodeNet is a node's place on the network.
type NodeNet struct {
	// Namespace is the node's network namespace (ip netns name).
	Namespace string
	// IP is the node's address.
	IP string
}

// Limit shapes what the node sends to rate (tc's notation, "400mbit"), like
// a modest cluster network, so that a big transfer takes seconds and a test
// can act in its middle. The returned func lifts the limit.
func (nn NodeNet) Limit(rate string) (lift func() error, err error) {
	if err := run("ip", "netns", "exec", nn.Namespace,
		"tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "256kb", "latency", "50ms"); err != nil {
		return nil, err
	}
	return func() error {
		return run("ip", "netns", "exec", nn.Namespace, "tc", "qdisc", "del", "dev", "eth0", "root")
	}, nil
}

// addNode creates a namespace with a veth on the bridge.
func (n *Network) addNode(node string) (NodeNet, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	nn := NodeNet{Namespace: n.name + "-" + node, IP: fmt.Sprintf("%s.%d", n.prefix, n.next)}
	veth := fmt.Sprintf("fv-%s-%d", n.name, n.next)
	n.next++
	if err := addNamespace(nn.Namespace); err != nil {
		return nn, err
	}
	n.nodes = append(n.nodes, nn.Namespace)
	err := errors.Join(
		ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", nn.Namespace),
		ip("link", "set", veth, "master", n.bridge(), "up"),
		ip("-n", nn.Namespace, "addr", "add", nn.IP+"/24", "dev", "eth0"),
		ip("-n", nn.Namespace, "link", "set", "eth0", "up"),
		ip("-n", nn.Namespace, "link", "set", "lo", "up"),
		InNamespace(nn.Namespace, func() error {
			// Per namespace: /proc/sys/net is the opening thread's network's.
			return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0)
		}),
	)
	return nn, err
}

// addNamespace creates a named network namespace, replacing one a killed
// run left behind. Test binaries run in parallel, and the first `ip netns
// add` on a machine turns /run/netns into a shared mount: two doing that at
// once stack two mounts there, and a namespace pinned under the lower one
// is then an empty file to everyone else. A lock across processes makes
// that first time happen once.
func addNamespace(name string) error {
	lock, err := os.OpenFile("/run/ferry-netns.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("netns lock: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("netns lock: %w", err)
	}
	_ = ip("netns", "del", name)
	return ip("netns", "add", name)
}

// Close deletes the namespaces (their veths and nftables rules go with
// them) and the bridge.
func (n *Network) Close() error {
	var errs []error
	for _, ns := range n.nodes {
		errs = append(errs, ip("netns", "del", ns))
	}
	errs = append(errs, ip("link", "del", n.bridge()))
	return errors.Join(errs...)
}

// Route adds, in a node's namespace, a route to cidr through gateway (or
// straight out of eth0 when gateway is empty).
func Route(nn NodeNet, cidr, gateway string) error {
	if gateway == "" {
		return ip("-n", nn.Namespace, "route", "replace", cidr, "dev", "eth0")
	}
	return ip("-n", nn.Namespace, "route", "replace", cidr, "via", gateway)
}

// InNamespace runs fn on an OS thread that has entered the namespace, so
// sockets fn creates belong to that node's network.
func InNamespace(ns string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own netns: %w", err)
	}
	defer orig.Close()
	target, err := os.Open("/var/run/netns/" + ns)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", ns, err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: it ends with this goroutine, never
		// serving another in the wrong network.
		return errors.Join(ferr, fmt.Errorf("leave netns %s: %w", ns, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

func ip(args ...string) error { return run("ip", args...) }

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
