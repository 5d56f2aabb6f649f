package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Faults a test injects into a running cluster: what production meets when
// a control plane restarts, a component hangs or a network link fails.

// StopAPIServer kills this cluster's kube-apiserver (SIGKILL, as a crashed
// or rebooted control-plane node loses it) and returns a function that
// starts it again with the same flags, certificates and etcd, and waits
// until it serves. Everything that talks to the cluster loses it in
// between, as in production.
func (c *Cluster) StopAPIServer() (restart func() error, err error) {
	u, err := url.Parse(c.Config.Host)
	if err != nil {
		return nil, fmt.Errorf("cluster: apiserver address: %w", err)
	}
	pid, argv, err := findProcess("kube-apiserver", "--secure-port="+u.Port())
	if err != nil {
		return nil, err
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return nil, fmt.Errorf("cluster: kill kube-apiserver: %w", err)
	}
	if err := waitFor(30*time.Second, func() bool { return !running(pid) }); err != nil {
		return nil, fmt.Errorf("cluster: kube-apiserver %d did not end: %w", pid, err)
	}
	return func() error {
		if err := c.run("kube-apiserver-restarted", argv[0], argv[1:]...); err != nil {
			return err
		}
		return waitFor(time.Minute, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			return c.Client.List(ctx, &corev1.NamespaceList{}, client.Limit(1)) == nil
		})
	}, nil
}

// Pause stops (SIGSTOP) the cluster's components named name (as in
// startComponents: "csi-snapshotter", ...) until the returned function
// resumes them: a hung component.
func (c *Cluster) Pause(name string) (resume func() error, err error) {
	var pids []int
	for _, p := range c.procs {
		if filepath.Base(p.path) == name {
			pids = append(pids, p.cmd.Process.Pid)
		}
	}
	if len(pids) == 0 {
		return nil, fmt.Errorf("cluster: no %s running", name)
	}
	signal := func(sig syscall.Signal) error {
		var errs []error
		for _, pid := range pids {
			errs = append(errs, syscall.Kill(pid, sig))
		}
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("cluster: signal %s: %w", name, err)
		}
		return nil
	}
	if err := signal(syscall.SIGSTOP); err != nil {
		return nil, err
	}
	return func() error { return signal(syscall.SIGCONT) }, nil
}

// CutLink takes a node's network link down: the node is cut off from
// every other node and cluster (its connections stall, as on a failed
// switch port) until the returned function brings it up again. Taking a
// link down makes the kernel drop the routes through it; restore puts
// them back as they were, so that later tests find the network whole.
func CutLink(nn NodeNet) (restore func() error, err error) {
	out, err := exec.Command("ip", "-n", nn.Namespace, "-o", "route", "show").Output()
	if err != nil {
		return nil, fmt.Errorf("cluster: routes of %s: %w", nn.Namespace, err)
	}
	if err := ip("-n", nn.Namespace, "link", "set", "eth0", "down"); err != nil {
		return nil, err
	}
	return func() error {
		if err := ip("-n", nn.Namespace, "link", "set", "eth0", "up"); err != nil {
			return err
		}
		for _, route := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if route == "" || strings.Contains(route, "proto kernel") {
				continue // the address brings it back
			}
			if err := ip(append([]string{"-n", nn.Namespace, "route", "replace"}, strings.Fields(route)...)...); err != nil {
				return err
			}
		}
		return nil
	}, nil
}

// Throttle limits what a node sends to rate (tc's notation: "40mbit"), so
// that a transfer lasts long enough for a fault to meet it mid-way; an
// empty rate lifts the limit.
func Throttle(nn NodeNet, rate string) error {
	if rate == "" {
		return run("ip", "netns", "exec", nn.Namespace, "tc", "qdisc", "del", "dev", "eth0", "root")
	}
	return run("ip", "netns", "exec", nn.Namespace, "tc", "qdisc", "replace", "dev", "eth0", "root",
		"tbf", "rate", rate, "burst", "64kb", "latency", "100ms")
}

// findProcess finds the process whose executable is named name and whose
// command line holds arg; it returns its pid and command line.
func findProcess(name, arg string) (int, []string, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, nil, fmt.Errorf("cluster: %w", err)
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(raw) == 0 {
			continue // gone meanwhile, or a kernel thread
		}
		argv := strings.Split(string(bytes.TrimRight(raw, "\x00")), "\x00")
		if filepath.Base(argv[0]) != name {
			continue
		}
		for _, a := range argv[1:] {
			if a == arg {
				return pid, argv, nil
			}
		}
	}
	return 0, nil, fmt.Errorf("cluster: no %s with %s running", name, arg)
}

// running says whether pid is alive (a zombie is not).
func running(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z"
}
