package controller_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/test/harness"
)

// soak runs many syncs through the CRs (FERRY_SOAK_SYNCS, 30 by default;
// make soak runs 1,000): a Direct and a Clone pair in turn, each sync after
// no change, a small change or a new file. Before and after it counts what
// a leak would leave behind: mounts, loop devices, the agents' and the
// controller's open fds and goroutines, the agents' child processes and
// transfer cgroups, Ferry's temp dirs, MountAssignments,
// VolumeAttachments, VolumeSnapshots and claims. Nothing may grow (a count
// released late is waited for, with a deadline), and each destination
// keeps only its latest image, which holds its source. It reports the
// agents' and the controller's CPU per sync and their RSS.
func soak(e *env) {
	t := e.t
	syncs := 30
	if v, err := strconv.Atoi(os.Getenv("FERRY_SOAK_SYNCS")); err == nil && v > 0 {
		syncs = v
	}
	const ns = "soak"
	e.namespace(ns, privileged)
	pairs := []struct {
		name   string
		method volsyncv1alpha1.CopyMethodType
	}{{"direct", volsyncv1alpha1.CopyMethodDirect}, {"clone", volsyncv1alpha1.CopyMethodClone}}
	for _, p := range pairs {
		e.claim(ns, p.name, "1Gi", nil)
		e.onVolume(ns, p.name, false, func(dir string) { writeApp(t, dir, "0") })
		e.namedPair(ns, p.name, p.name, p.method, "0")
		e.synced(ns, p.name, "0")
		e.trigger(ns, p.name, "warm") // a second sync: what a pair keeps from then on exists
	}
	settled := func() bool { // every destination at one ready image
		snaps := e.snapshots(ns)
		return len(snaps) == len(pairs)
	}
	testenv.Eventually(t, "one image per destination", time.Minute, settled)
	before := e.leakCounts(ns)
	cpu := e.cpuSeconds()
	start := time.Now()
	for i := 1; i <= syncs; i++ {
		p := pairs[i%len(pairs)]
		switch i % 3 {
		case 1: // a small change
			e.onVolume(ns, p.name, false, func(dir string) {
				require.NoError(t, os.WriteFile(filepath.Join(dir, "small"), []byte(strconv.Itoa(i)), 0o644))
			})
		case 2: // a new file
			e.onVolume(ns, p.name, false, func(dir string) {
				require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("new-%d", i)), []byte(strings.Repeat("x", i)), 0o644))
			})
		}
		e.trigger(ns, p.name, strconv.Itoa(i))
	}
	took := time.Since(start)
	testenv.Eventually(t, "one image per destination", time.Minute, settled)
	var after map[string]int
	var grown []string
	grew := func() []string {
		after = e.leakCounts(ns)
		var out []string
		for k, v := range after {
			if v > before[k] {
				out = append(out, fmt.Sprintf("%s: %d → %d", k, before[k], v))
			}
		}
		sort.Strings(out)
		return out
	}
	testenv.Eventually(t, "no count above where it was before the syncs", time.Minute,
		func() bool { grown = grew(); return len(grown) == 0 },
		func() string { return "grown: " + strings.Join(grown, ", ") })
	spent := e.cpuSeconds()
	for who, s := range spent {
		t.Logf("%s: %.1f ms CPU per sync, RSS %.1f MiB", who, 1000*(s-cpu[who])/float64(syncs),
			e.procByName(who).Metric("process_resident_memory_bytes", nil)/(1<<20))
	}
	t.Logf("%d syncs in %s (%.2f s each, with the test's own mounts for the changes); counts before %v, after %v",
		syncs, took.Round(time.Second), took.Seconds()/float64(syncs), before, after)
	for _, p := range pairs {
		img := e.rd(ns, p.name).Status.LatestImage
		require.NotNil(t, img)
		assert.Equal(t, e.tree(ns, p.name), e.restored(ns, img.Name), "%s: the latest image holds the source", p.name)
	}
}

// leakCounts counts what a leak of Ferry's would leave behind; ns is the
// namespace of the claims and snapshots.
func (e *env) leakCounts(ns string) map[string]int {
	t, ctx := e.t, context.Background()
	t.Helper()
	out := map[string]int{}
	// Only what lies in this cluster's directories counts: other packages'
	// tests run beside this one and mount, attach and create temp dirs too.
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 4 && (within(f[4], e.c.Dir) || within(f[4], e.work)) {
			out["mounts"]++
		}
	}
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, l := range loops {
		if b, err := os.ReadFile(l); err == nil && within(strings.TrimSpace(string(b)), e.c.Dir) {
			out["loop devices"]++
		}
	}
	temps, _ := filepath.Glob(filepath.Join(e.c.Dir, "nodes", "*", "tmp", "ferry-*"))
	out["temp dirs"] = len(temps)
	for _, p := range append([]*harness.Proc{e.ctrl}, e.agents...) {
		name := e.procName(p)
		out[name+" fds"] = int(p.Metric("process_open_fds", nil))
		out[name+" goroutines"] = int(p.Metric("go_goroutines", nil))
		if p != e.ctrl {
			out[name+" child processes"] = descendants(t, p.Pid())
			out[name+" cgroups"] = transferCgroups(p.Pid())
		}
	}
	mas := &agentv1alpha1.MountAssignmentList{}
	require.NoError(t, e.k.List(ctx, mas, client.InNamespace(harness.Namespace)))
	out["MountAssignments"] = len(mas.Items)
	vas := &storagev1.VolumeAttachmentList{}
	require.NoError(t, e.k.List(ctx, vas))
	out["VolumeAttachments"] = len(vas.Items)
	out["VolumeSnapshots"] = len(e.snapshots(ns))
	pvcs := &corev1.PersistentVolumeClaimList{}
	require.NoError(t, e.k.List(ctx, pvcs, client.InNamespace(ns)))
	out["claims"] = len(pvcs.Items)
	return out
}

// within says whether path is dir or lies below it.
func within(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, dir+"/")
}

// snapshots lists the VolumeSnapshots of namespace ns.
func (e *env) snapshots(ns string) []unstructured.Unstructured {
	e.t.Helper()
	list := &unstructured.UnstructuredList{}
	list.SetAPIVersion("snapshot.storage.k8s.io/v1")
	list.SetKind("VolumeSnapshotList")
	require.NoError(e.t, e.k.List(context.Background(), list, client.InNamespace(ns)))
	return list.Items
}

// procName names one of Ferry's processes in reports.
func (e *env) procName(p *harness.Proc) string {
	if p == e.ctrl {
		return "controller"
	}
	for i, a := range e.agents {
		if a == p {
			return "agent " + e.c.Nodes[i].Name
		}
	}
	return "?"
}

// procByName is the process procName names.
func (e *env) procByName(name string) *harness.Proc {
	for _, p := range append([]*harness.Proc{e.ctrl}, e.agents...) {
		if e.procName(p) == name {
			return p
		}
	}
	e.t.Fatalf("no process %q", name)
	return nil
}

// cpuSeconds is the CPU time each of Ferry's processes has used.
func (e *env) cpuSeconds() map[string]float64 {
	out := map[string]float64{}
	for _, p := range append([]*harness.Proc{e.ctrl}, e.agents...) {
		out[e.procName(p)] = p.Metric("process_cpu_seconds_total", nil)
	}
	return out
}

// transferCgroups counts the transfers' cgroups the agent with pid holds
// in its pool: their names carry the agent's pid, which tells them from
// those of agents other packages' tests run beside this one.
func transferCgroups(pid int) int {
	n := 0
	mark := fmt.Sprintf("-%d-", pid)
	_ = filepath.WalkDir("/sys/fs/cgroup", func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if filepath.Base(filepath.Dir(path)) == "ferry-transfers" {
			if strings.Contains(d.Name(), mark) {
				n++ // a group, in one controller's hierarchy
			}
			return filepath.SkipDir
		}
		return nil
	})
	return n
}

// descendants counts the processes below pid.
func descendants(t require.TestingT, pid int) int {
	entries, err := os.ReadDir("/proc")
	require.NoError(t, err)
	parent := map[int]int{}
	for _, en := range entries {
		p, err := strconv.Atoi(en.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", en.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(fields) > 1 {
			parent[p], _ = strconv.Atoi(fields[1])
		}
	}
	n := 0
	for p := range parent {
		for q := parent[p]; q > 1; q = parent[q] {
			if q == pid {
				n++
				break
			}
		}
	}
	return n
}
