// Package scale measures a scale run, for make scale's two scenarios (the
// real agents of test/controller, the simulated nodes of test/kwok): it
// samples the counters of the apiservers and of Ferry's processes at a
// window's start and end, follows the syncs of the ReplicationSources in
// between, works out the figures of one level (missed intervals, trigger
// lag, sync duration, API requests per sync, CPU and memory) and writes them
// into docs/scale.md as a table and a plot, one section per scenario.
package scale

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/stretchr/testify/require"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ferrysync/ferry/test/harness"
)

// Target is what a run samples.
type Target struct {
	// Clusters are the apiservers by side ("source", "destination"; one
	// cluster serving both is "cluster").
	Clusters map[string]*rest.Config
	// Procs are Ferry's processes whose /metrics give CPU and memory, by
	// name: "controller" for the source side's controller, "<side>
	// controller" for another, "agent <node>" for agents.
	Procs map[string]*harness.Proc
	// Controller is the one whose volsync_missed_intervals_total counts.
	Controller *harness.Proc
	// Background are resources (with their subresource) whose requests
	// are left out: they grow with something other than syncs.
	Background []string
	// Comms are other processes, by their command name, whose CPU is read
	// from /proc (every kube-apiserver on the machine, every etcd).
	Comms []string
}

// Sample is what a run reads at a window's start and end.
type Sample struct {
	at time.Time
	// missed is volsync_missed_intervals_total, summed.
	missed float64
	// requests are apiserver_request_total by side, verb and resource
	// ("source LIST replicationsources").
	requests map[string]float64
	// cpu is CPU seconds and rss resident bytes, by process name.
	cpu, rss map[string]float64
	// slot is the source agents' histograms of the steps that hold a
	// transfer slot, summed over agents, by step of slotSteps.
	slot map[string]histogram
}

// histogram is a Prometheus histogram's sum (seconds) and count.
type histogram struct{ sum, count float64 }

// slotSteps are the agent histograms, by step, whose means show where a
// source's transfer slot goes (its role="source" series).
var slotSteps = map[string]string{
	"publish":  "ferry_agent_publish_duration_seconds",
	"transfer": "ferry_agent_transfer_duration_seconds",
}

// At is when the sample was read.
func (s Sample) At() time.Time { return s.at }

// Sample reads the counters of the target's clusters and processes.
func (tg Target) Sample(t require.TestingT) Sample {
	out := Sample{at: time.Now(), requests: map[string]float64{}, cpu: map[string]float64{}, rss: map[string]float64{}, slot: map[string]histogram{}}
	out.missed = tg.Controller.MetricSum("volsync_missed_intervals_total", nil)
	for side, cfg := range tg.Clusters {
		for k, v := range apiRequests(t, cfg) {
			if _, resource, _ := strings.Cut(k, " "); !slices.Contains(tg.Background, resource) {
				out.requests[side+" "+k] = v
			}
		}
	}
	for name, p := range tg.Procs {
		out.cpu[name] = p.Metric("process_cpu_seconds_total", nil)
		out.rss[name] = p.Metric("process_resident_memory_bytes", nil)
		if processKind(name) != "agent" {
			continue
		}
		for step, metric := range slotSteps {
			h := out.slot[step]
			h.sum += p.MetricSum(metric+"_sum", map[string]string{"role": "source"})
			h.count += p.MetricSum(metric+"_count", map[string]string{"role": "source"})
			out.slot[step] = h
		}
	}
	for _, comm := range tg.Comms {
		out.cpu[comm] = commCPU(t, comm)
	}
	return out
}

var requestLine = regexp.MustCompile(`^apiserver_request_total\{(.*)\} (\S+)$`)
var labelPair = regexp.MustCompile(`(\w+)="([^"]*)"`)

// apiRequests reads a cluster's apiserver_request_total by verb and
// resource (with its subresource).
func apiRequests(t require.TestingT, cfg *rest.Config) map[string]float64 {
	cs, err := kubernetes.NewForConfig(cfg)
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

// commCPU is the CPU seconds of every process named comm on the machine.
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
