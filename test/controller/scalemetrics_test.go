package controller_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/stretchr/testify/require"
	"k8s.io/client-go/kubernetes"

	"github.com/ferrysync/ferry/test/cluster"
	"github.com/ferrysync/ferry/test/harness"
)

// scaleSample is what the scale run reads at a window's start and end.
type scaleSample struct {
	at time.Time
	// missed is the source cluster's volsync_missed_intervals_total, summed.
	missed float64
	// requests are each apiserver's apiserver_request_total by side, verb
	// and resource ("source LIST replicationsources").
	requests map[string]float64
	// cpu is CPU seconds and rss resident bytes, by process ("controller",
	// "agent source/node-a", "kube-apiserver", "etcd").
	cpu, rss map[string]float64
}

// sample reads the counters of both clusters and their processes.
func (s *scaleRun) sample() scaleSample {
	t := s.src.t
	out := scaleSample{at: time.Now(), requests: map[string]float64{}, cpu: map[string]float64{}, rss: map[string]float64{}}
	out.missed = s.src.ctrl.MetricSum("volsync_missed_intervals_total")
	for side, e := range map[string]*env{"source": s.src, "destination": s.dst} {
		for k, v := range apiRequests(t, e.c) {
			out.requests[side+" "+k] = v
		}
		procs := map[string]*harness.Proc{side + " controller": e.ctrl}
		for i, a := range e.agents {
			procs[fmt.Sprintf("%s agent %s", side, e.c.Nodes[i].Name)] = a
		}
		for name, p := range procs {
			out.cpu[name] = p.Metric("process_cpu_seconds_total", nil)
			out.rss[name] = p.Metric("process_resident_memory_bytes", nil)
		}
	}
	for _, comm := range []string{"kube-apiserver", "etcd"} {
		out.cpu[comm] = commCPU(t, comm)
	}
	return out
}

var requestLine = regexp.MustCompile(`^apiserver_request_total\{(.*)\} (\S+)$`)
var labelPair = regexp.MustCompile(`(\w+)="([^"]*)"`)

// apiRequests reads a cluster's apiserver_request_total by verb and
// resource (with its subresource).
func apiRequests(t require.TestingT, c *cluster.Cluster) map[string]float64 {
	cs, err := kubernetes.NewForConfig(c.Config)
	require.NoError(t, err)
	raw, err := cs.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	require.NoError(t, err)
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := requestLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		labels := map[string]string{}
		for _, p := range labelPair.FindAllStringSubmatch(m[1], -1) {
			labels[p[1]] = p[2]
		}
		key := labels["verb"] + " " + labels["resource"]
		if labels["subresource"] != "" {
			key += "/" + labels["subresource"]
		}
		v, err := strconv.ParseFloat(m[2], 64)
		require.NoError(t, err)
		out[key] += v
	}
	return out
}

// commCPU is the CPU seconds of every process named comm on the machine
// (both test clusters' apiservers, or etcds).
func commCPU(t require.TestingT, comm string) float64 {
	entries, err := os.ReadDir("/proc")
	require.NoError(t, err)
	total := 0.0
	for _, en := range entries {
		if _, err := strconv.Atoi(en.Name()); err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", en.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(stat)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < 0 || s[open+1:end] != comm {
			continue
		}
		// After "pid (comm) ": state is field 3, utime 14 and stime 15.
		f := strings.Fields(s[end+1:])
		utime, _ := strconv.ParseFloat(f[11], 64)
		stime, _ := strconv.ParseFloat(f[12], 64)
		total += (utime + stime) / 100 // USER_HZ
	}
	return total
}

// scaleRow is one level's figures.
type scaleRow struct {
	n, syncs                       int
	missed                         float64
	lagP50, lagP99, durP50, durP99 time.Duration
	// perSync are API requests per sync by side ("source", "destination").
	perSync map[string]float64
	// top are each side's most frequent requests per sync.
	top map[string][]string
	// cores and mib are CPU (cores, averaged over the window) and peak
	// resident memory by process kind.
	cores, mib map[string]float64
}

// newScaleRow works out a level's figures from its window's two samples,
// its syncs' lags and durations and the run's own LISTs (not counted).
func newScaleRow(n int, window time.Duration, before, after scaleSample, lags, durations []time.Duration, lists int) scaleRow {
	r := scaleRow{n: n, syncs: len(lags), missed: after.missed - before.missed,
		lagP50: percentile(lags, 0.5), lagP99: percentile(lags, 0.99), durP50: percentile(durations, 0.5), durP99: percentile(durations, 0.99),
		perSync: map[string]float64{}, cores: map[string]float64{}, mib: map[string]float64{}}
	syncs := float64(max(r.syncs, 1))
	per := map[string]map[string]float64{}
	for k, v := range after.requests {
		d := v - before.requests[k]
		if k == "source LIST replicationsources" {
			d -= float64(lists)
		}
		if d <= 0 {
			continue
		}
		side, what, _ := strings.Cut(k, " ")
		r.perSync[side] += d / syncs
		if per[side] == nil {
			per[side] = map[string]float64{}
		}
		per[side][what] = d / syncs
	}
	r.top = map[string][]string{}
	for side, m := range per {
		whats := make([]string, 0, len(m))
		for w := range m {
			whats = append(whats, w)
		}
		sort.Slice(whats, func(i, j int) bool { return m[whats[i]] > m[whats[j]] })
		for _, w := range whats[:min(6, len(whats))] {
			r.top[side] = append(r.top[side], fmt.Sprintf("%s %.1f", w, m[w]))
		}
	}
	secs := after.at.Sub(before.at).Seconds()
	for name, v := range after.cpu {
		kind := processKind(name)
		r.cores[kind] = max(r.cores[kind], (v-before.cpu[name])/secs)
	}
	for name, v := range after.rss {
		kind := processKind(name)
		r.mib[kind] = max(r.mib[kind], max(v, before.rss[name])/(1<<20))
	}
	return r
}

// processKind groups processes for the table: the source cluster's
// controller, the busiest agent, the apiservers, etcd.
func processKind(name string) string {
	switch {
	case name == "source controller":
		return "controller"
	case strings.Contains(name, " agent "):
		return "agent"
	case strings.Contains(name, "controller"):
		return "destination controller"
	}
	return name
}

func (r scaleRow) String() string {
	return fmt.Sprintf("N=%d: %d syncs, %.0f missed, lag p50 %v p99 %v, duration p50 %v p99 %v, requests/sync source %.1f destination %.1f, controller %.2f cores %.0f MiB, agent %.2f cores %.0f MiB, apiservers %.2f, etcd %.2f cores; top: %s",
		r.n, r.syncs, r.missed, r.lagP50, r.lagP99, r.durP50, r.durP99, r.perSync["source"], r.perSync["destination"],
		r.cores["controller"], r.mib["controller"], r.cores["agent"], r.mib["agent"], r.cores["kube-apiserver"], r.cores["etcd"], strings.Join(r.top["source"], ", ")+" | "+strings.Join(r.top["destination"], ", "))
}
