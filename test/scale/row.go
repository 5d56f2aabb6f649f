package scale

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/stretchr/testify/require"
	"sigs.k8s.io/controller-runtime/pkg/client"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
)

// Syncs are the syncs a window saw: each one's trigger lag and duration.
type Syncs struct {
	Lags, Durations []time.Duration
	// Lists is how many LISTs of ReplicationSources following them cost
	// (taken out of the requests per sync).
	Lists int
}

// Follow lists the ReplicationSources of namespace every tick until window
// has passed from start, and returns the syncs that started after start
// and completed. The lag is the start's distance from its scheduled time,
// a multiple of interval.
func Follow(t require.TestingT, c client.Reader, namespace string, start time.Time, window, tick, interval time.Duration) Syncs {
	var out Syncs
	seen := map[string]time.Time{} // each source's last sync start seen
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	for ; time.Since(start) < window; <-ticker.C {
		list := &volsyncv1alpha1.ReplicationSourceList{}
		require.NoError(t, c.List(context.Background(), list, client.InNamespace(namespace)))
		out.Lists++
		for _, rs := range list.Items {
			st := rs.Status
			if st.LastSyncStartTime == nil || st.LastSyncTime == nil || !st.LastSyncTime.After(st.LastSyncStartTime.Time) {
				continue
			}
			began := st.LastSyncStartTime.Time
			if !began.After(start) || began.Equal(seen[rs.Name]) {
				continue
			}
			seen[rs.Name] = began
			out.Lags = append(out.Lags, began.Sub(began.Truncate(interval)))
			if st.LastSyncDuration != nil {
				out.Durations = append(out.Durations, st.LastSyncDuration.Duration)
			}
		}
	}
	return out
}

// Row is one level's figures.
type Row struct {
	N, Syncs                       int
	Missed                         float64
	LagP50, LagP99, DurP50, DurP99 time.Duration
	// PerSync are API requests per sync by side.
	PerSync map[string]float64
	// Top are each side's most frequent requests per sync.
	Top map[string][]string
	// Cores and MiB are CPU (cores, averaged over the window) and peak
	// resident memory by process kind: "controller", "destination
	// controller", "agent" (the busiest), and the Target's Comms.
	Cores, MiB map[string]float64
	// Slot is the mean time of each step that holds a source's transfer
	// slot on the agents ("publish", "transfer"; empty without agents).
	Slot map[string]time.Duration
}

// NewRow works out a level's figures from its window's two samples and its
// syncs; lists are the LISTs of ReplicationSources the run made itself, on
// side, not counted.
func NewRow(n int, before, after Sample, s Syncs, side string) Row {
	r := Row{N: n, Syncs: len(s.Lags), Missed: after.missed - before.missed,
		LagP50: percentile(s.Lags, 0.5), LagP99: percentile(s.Lags, 0.99),
		DurP50: percentile(s.Durations, 0.5), DurP99: percentile(s.Durations, 0.99),
		PerSync: map[string]float64{}, Cores: map[string]float64{}, MiB: map[string]float64{}, Slot: map[string]time.Duration{}}
	syncs := float64(max(r.Syncs, 1))
	per := map[string]map[string]float64{}
	for k, v := range after.requests {
		d := v - before.requests[k]
		if k == side+" LIST replicationsources" {
			d -= float64(s.Lists)
		}
		if d <= 0 {
			continue
		}
		side, what, _ := strings.Cut(k, " ")
		r.PerSync[side] += d / syncs
		if per[side] == nil {
			per[side] = map[string]float64{}
		}
		per[side][what] = d / syncs
	}
	r.Top = map[string][]string{}
	for side, m := range per {
		whats := make([]string, 0, len(m))
		for w := range m {
			whats = append(whats, w)
		}
		sort.Slice(whats, func(i, j int) bool { return m[whats[i]] > m[whats[j]] })
		for _, w := range whats[:min(6, len(whats))] {
			r.Top[side] = append(r.Top[side], fmt.Sprintf("%s %.1f", w, m[w]))
		}
	}
	secs := after.at.Sub(before.at).Seconds()
	for name, v := range after.cpu {
		kind := processKind(name)
		r.Cores[kind] = max(r.Cores[kind], (v-before.cpu[name])/secs)
	}
	for name, v := range after.rss {
		kind := processKind(name)
		r.MiB[kind] = max(r.MiB[kind], max(v, before.rss[name])/(1<<20))
	}
	for step := range slotSteps {
		a, b := after.slot[step], before.slot[step]
		if n := a.count - b.count; n > 0 {
			r.Slot[step] = time.Duration((a.sum - b.sum) / n * float64(time.Second))
		}
	}
	return r
}

// SlotString says where a source's transfer slot went ("" without agents).
func (r Row) SlotString() string {
	if len(r.Slot) == 0 {
		return ""
	}
	return fmt.Sprintf("publish %v, transfer %v (means)", r.Slot["publish"].Round(time.Millisecond), r.Slot["transfer"].Round(time.Millisecond))
}

// processKind groups processes for the table: the agents by their busiest.
func processKind(name string) string {
	if strings.HasPrefix(name, "agent ") || strings.Contains(name, " agent ") {
		return "agent"
	}
	return name
}

// percentile of sorted-in-place durations (0 when none).
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[min(len(d)-1, int(p*float64(len(d))))]
}

func (r Row) String() string {
	var per []string
	for side, v := range r.PerSync {
		per = append(per, fmt.Sprintf("%s %.1f", side, v))
	}
	sort.Strings(per)
	var top []string
	for side, t := range r.Top {
		top = append(top, side+": "+strings.Join(t, ", "))
	}
	sort.Strings(top)
	return fmt.Sprintf("N=%d: %d syncs, %.0f missed, lag p50 %v p99 %v, duration p50 %v p99 %v, requests/sync %s, controller %.2f cores %.0f MiB, agent %.2f cores %.0f MiB, apiservers %.2f, etcd %.2f cores; source slot: %s; top: %s",
		r.N, r.Syncs, r.Missed, r.LagP50, r.LagP99, r.DurP50, r.DurP99, strings.Join(per, ", "),
		r.Cores["controller"], r.MiB["controller"], r.Cores["agent"], r.MiB["agent"], r.Cores["kube-apiserver"], r.Cores["etcd"], r.SlotString(), strings.Join(top, " | "))
}
