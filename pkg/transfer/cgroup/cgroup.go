// Package cgroup gives each confined rsync a cgroup of its own with memory
// and process-count limits, so that one tenant's transfer (a hostile peer
// driving rsync's allocations, a fork loop) is killed alone instead of
// exhausting the node agent's memory and aborting everyone's transfers.
//
// Groups are made under the agent's own cgroup: in cgroup v1 one directory
// per hierarchy (memory, pids), in cgroup v2 one directory whose parent has
// the memory and pids controllers enabled. Under v2 a process may not sit
// in a cgroup whose controllers are delegated to children, so the agent
// first moves itself into a leaf of its own ("agent"), as container
// runtimes do inside a container.
package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Limits are one transfer's limits; zero means unlimited.
type Limits struct {
	// MemoryBytes bounds the transfer's memory (rsync's and its page
	// cache); past it the kernel kills the transfer.
	MemoryBytes int64
	// Pids bounds the transfer's processes and threads.
	Pids int64
	// CPUMillis bounds the transfer's CPU time, in thousandths of a CPU.
	CPUMillis int64
}

// Lower is l with each limit of o that is tighter: a CR's moverResources
// may lower the node's limits, never raise them.
func (l Limits) Lower(o Limits) Limits {
	tighter := func(a, b int64) int64 {
		if a <= 0 || (b > 0 && b < a) {
			return b
		}
		return a
	}
	return Limits{MemoryBytes: tighter(l.MemoryBytes, o.MemoryBytes), Pids: tighter(l.Pids, o.Pids),
		CPUMillis: tighter(l.CPUMillis, o.CPUMillis)}
}

// v1Controllers are the cgroup v1 hierarchies a group has a directory in;
// cpu only where the node mounts it.
var v1Controllers = []string{"memory", "pids", "cpu"}

// Pool makes groups under one parent.
type Pool struct {
	limits Limits
	v2     bool
	// parents are the directories groups are made in, by controller (v1),
	// or under "" (v2).
	parents map[string]string
	seq     atomic.Uint64
}

// Root is where cgroup filesystems are mounted.
const Root = "/sys/fs/cgroup"

// OOMMessage says why a transfer whose group OOMKilled ended.
const OOMMessage = "rsync was killed: the transfer exceeded its memory limit"

// ErrOOMKilled is the error of a transfer whose group OOMKilled, for the
// agent to count apart (an alert on limits set too low).
var ErrOOMKilled = errors.New(OOMMessage)

// New prepares a pool named name under this process's cgroups, whose
// groups get limits l (or lower). It fails when memory and pids limits
// cannot be enforced here (no cgroup filesystem, no controller, no write
// access), saying what is missing.
func New(name string, l Limits) (*Pool, error) {
	own, err := ownCgroups("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	p := &Pool{limits: l, parents: map[string]string{}}
	if _, err := os.Stat(filepath.Join(Root, "cgroup.controllers")); err == nil {
		p.v2 = true
		parent, err := prepareV2(filepath.Join(Root, own[""]), name)
		if err != nil {
			return nil, err
		}
		p.parents[""] = parent
		p.removeStale()
		return p, nil
	}
	for _, controller := range v1Controllers {
		path, ok := own[controller]
		if !ok {
			if controller == "cpu" {
				continue // CPU limits need it; memory and pids must be there
			}
			return nil, fmt.Errorf("cgroup: no %s controller (cgroup v1) in /proc/self/cgroup", controller)
		}
		parent := filepath.Join(Root, controller, path, name)
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return nil, fmt.Errorf("cgroup: make %s: %w", parent, err)
		}
		p.parents[controller] = parent
	}
	p.removeStale()
	return p, nil
}

// removeStale removes groups an earlier agent left behind (killed before it
// could): those named after a process that no longer runs.
func (p *Pool) removeStale() {
	for _, parent := range p.parents {
		entries, _ := os.ReadDir(parent)
		for _, e := range entries {
			parts := strings.Split(e.Name(), "-")
			if !e.IsDir() || len(parts) < 3 {
				continue
			}
			pid, err := strconv.Atoi(parts[len(parts)-2])
			if err != nil {
				continue
			}
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); os.IsNotExist(err) {
				_ = os.Remove(filepath.Join(parent, e.Name())) // fails while in use: kept
			}
		}
	}
}

// Remove deletes the pool's parent directories, once their groups are gone.
func (p *Pool) Remove() {
	for _, parent := range p.parents {
		_ = os.Remove(parent)
	}
}

// ownCgroups reads a /proc/PID/cgroup file: controller → path ("" for the
// v2 hierarchy).
func ownCgroups(file string) (map[string]string, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			out[c] = parts[2]
		}
	}
	return out, sc.Err()
}

// prepareV2 makes dir/name with memory, pids and cpu enabled for its
// children, moving this process into dir/agent first if dir must delegate.
func prepareV2(dir, name string) (string, error) {
	enable := func(d string) error {
		return os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte("+memory +pids +cpu"), 0)
	}
	if err := enable(dir); err != nil {
		// EBUSY: processes live in dir itself. Move ours to a leaf.
		leaf := filepath.Join(dir, "agent")
		if err := os.MkdirAll(leaf, 0o755); err != nil {
			return "", fmt.Errorf("cgroup: make %s: %w", leaf, err)
		}
		if err := os.WriteFile(filepath.Join(leaf, "cgroup.procs"), []byte("0"), 0); err != nil {
			return "", fmt.Errorf("cgroup: move the agent into %s: %w", leaf, err)
		}
		if err := enable(dir); err != nil {
			return "", fmt.Errorf("cgroup: enable memory, pids and cpu in %s: %w", dir, err)
		}
	}
	parent := filepath.Join(dir, name)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", fmt.Errorf("cgroup: make %s: %w", parent, err)
	}
	if err := enable(parent); err != nil {
		return "", fmt.Errorf("cgroup: enable memory, pids and cpu in %s: %w", parent, err)
	}
	return parent, nil
}

// Group is one transfer's cgroup.
type Group struct {
	v2 bool
	// dirs are its directories by controller (v1), or under "" (v2).
	dirs map[string]string
}

// Make creates a group with the pool's limits, lowered by l; the
// confinement joins its Dirs. prefix names it (the destination or source).
func (p *Pool) Make(prefix string, l Limits) (*Group, error) {
	name := fmt.Sprintf("%s-%d-%d", sanitize(prefix), os.Getpid(), p.seq.Add(1))
	g := &Group{v2: p.v2, dirs: map[string]string{}}
	for controller, parent := range p.parents {
		dir := filepath.Join(parent, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			g.Remove()
			return nil, fmt.Errorf("cgroup: make %s: %w", dir, err)
		}
		g.dirs[controller] = dir
	}
	if err := g.limit(p.limits.Lower(l)); err != nil {
		g.Remove()
		return nil, err
	}
	return g, nil
}

// cpuPeriod is the CFS period CPU limits are expressed in (100 ms).
const cpuPeriod = 100000

// limit writes the limits into the group's files.
func (g *Group) limit(l Limits) error {
	set := func(controller, file, value string) error {
		dir, ok := g.dirs[controller]
		if !ok {
			return fmt.Errorf("cgroup: no %s controller here for %s", controller, file)
		}
		if err := os.WriteFile(filepath.Join(dir, file), []byte(value), 0); err != nil {
			return fmt.Errorf("cgroup: set %s: %w", file, err)
		}
		return nil
	}
	itoa := func(v int64) string { return strconv.FormatInt(v, 10) }
	var errs []error
	if !g.v2 {
		if l.MemoryBytes > 0 {
			errs = append(errs, set("memory", "memory.limit_in_bytes", itoa(l.MemoryBytes)))
		}
		if l.Pids > 0 {
			errs = append(errs, set("pids", "pids.max", itoa(l.Pids)))
		}
		if l.CPUMillis > 0 {
			errs = append(errs, set("cpu", "cpu.cfs_period_us", itoa(cpuPeriod)),
				set("cpu", "cpu.cfs_quota_us", itoa(l.CPUMillis*cpuPeriod/1000)))
		}
		return errors.Join(errs...)
	}
	if l.MemoryBytes > 0 {
		errs = append(errs, set("", "memory.max", itoa(l.MemoryBytes)))
		// v2 counts swap apart: none, so the memory limit is the whole of
		// it. The file is absent without swap accounting.
		if err := set("", "memory.swap.max", "0"); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if l.Pids > 0 {
		errs = append(errs, set("", "pids.max", itoa(l.Pids)))
	}
	if l.CPUMillis > 0 {
		errs = append(errs, set("", "cpu.max", fmt.Sprintf("%d %d", l.CPUMillis*cpuPeriod/1000, cpuPeriod)))
	}
	return errors.Join(errs...)
}

// Dirs are the group's directories, one per hierarchy.
func (g *Group) Dirs() []string {
	out := make([]string, 0, len(g.dirs))
	for _, d := range g.dirs {
		out = append(out, d)
	}
	return out
}

// OOMKilled says whether the kernel killed a process of the group for
// exceeding its memory limit (the oom_kill count of memory.events in v2,
// of memory.oom_control in v1).
func (g *Group) OOMKilled() bool {
	dir, file := g.dirs["memory"], "memory.oom_control"
	if g.v2 {
		dir, file = g.dirs[""], "memory.events"
	}
	if dir == "" {
		return false
	}
	raw, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "oom_kill" && f[1] != "0" {
			return true
		}
	}
	return false
}

// Remove deletes the group once its processes are gone (a killed
// transfer's last processes may take a moment to be reaped).
func (g *Group) Remove() {
	deadline := time.Now().Add(5 * time.Second)
	for _, dir := range g.dirs {
		for os.Remove(dir) != nil && time.Now().Before(deadline) {
			if _, err := os.Stat(dir); os.IsNotExist(err) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// sanitize keeps a name usable as a directory name.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == '.' || r < ' ' {
			return '_'
		}
		return r
	}, s)
}
