package cluster

// The cluster's components as processes: started with their logs in the
// cluster's directory, stopped, and restarted as an upgrade would.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// process is a running component and how to start it again.
type process struct {
	name, path string
	args       []string
	cmd        *exec.Cmd
}

// run starts a component and keeps it for Stop.
func (c *Cluster) run(name, path string, args ...string) error {
	p := &process{name: name, path: path, args: args}
	if err := c.startProcess(p); err != nil {
		return err
	}
	c.procs = append(c.procs, p)
	return nil
}

// startProcess runs a component with its output appended to
// logs/<name>.log; it dies with the test process at the latest.
func (c *Cluster) startProcess(p *process) error {
	f, err := os.OpenFile(filepath.Join(c.Dir, "logs", p.name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("cluster: log file: %w", err)
	}
	defer f.Close()
	p.cmd = exec.Command(p.path, p.args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("cluster: start %s: %w", p.name, err)
	}
	return nil
}

// stopProcess ends a component: SIGTERM, then SIGKILL after five seconds.
func stopProcess(p *process) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

// RestartControllerManager stops kube-controller-manager and starts it
// again, as an upgrade or a leader change would: it rebuilds its view of
// the world from the apiserver.
func (c *Cluster) RestartControllerManager() error {
	return c.restart("kube-controller-manager", func(p *process) bool { return filepath.Base(p.path) == "kube-controller-manager" })
}

// RestartKubelet stops a real node's kubelet and starts it again, as an
// upgrade does: it reconstructs its volumes from the node's disk and cleans
// up what it finds orphaned there.
func (c *Cluster) RestartKubelet(node string) error {
	return c.restart("kubelet of "+node, func(p *process) bool { return p.name == "kubelet-"+node })
}

// restart stops the first process that match picks and starts it again.
func (c *Cluster) restart(what string, match func(*process) bool) error {
	for _, p := range c.procs {
		if match(p) {
			stopProcess(p)
			return c.startProcess(p)
		}
	}
	return fmt.Errorf("cluster: %s is not running", what)
}
