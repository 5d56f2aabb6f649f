package metrics

import (
	"fmt"
	"math"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestQuantiles(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values []float64
		want   map[float64]float64
	}{
		{"none", nil, map[float64]float64{0.5: math.NaN(), 0.9: math.NaN(), 0.99: math.NaN()}},
		{"one", []float64{7}, map[float64]float64{0.5: 7, 0.9: 7, 0.99: 7}},
		{"two", []float64{9, 1}, map[float64]float64{0.5: 1, 0.9: 9, 0.99: 9}},
		{"ten, unsorted", []float64{10, 9, 8, 7, 6, 5, 4, 3, 2, 1}, map[float64]float64{0.5: 5, 0.9: 9, 0.99: 10}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := quantiles(tc.values, ranks)
			for q, want := range tc.want {
				if math.IsNaN(want) {
					assert.True(t, math.IsNaN(got[q]), "q%v: %v", q, got[q])
					continue
				}
				assert.Equal(t, want, got[q], "q%v", q)
			}
		})
	}
}

// summaryOf collects d and returns the series whose obj_name is name.
func summaryOf(t *testing.T, d *durations, name string) *dto.Summary {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(d))
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		require.Equal(t, "volsync_sync_duration_seconds", f.GetName())
		require.Equal(t, dto.MetricType_SUMMARY, f.GetType())
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "obj_name" && l.GetValue() == name {
					return m.GetSummary()
				}
			}
		}
	}
	return nil
}

func quantileOf(s *dto.Summary, q float64) float64 {
	for _, x := range s.GetQuantile() {
		if x.GetQuantile() == q {
			return x.GetValue()
		}
	}
	return math.Inf(-1)
}

// The summary VolSync's dashboards read: count and sum since the start,
// quantiles over the last ten minutes, NaN once none is that recent, and
// nothing left of a forgotten CR.
func TestDurationsSummary(t *testing.T) {
	clock := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	d := newDurations(func() time.Time { return clock })
	rs := Object{Name: "rs", Namespace: "ns", Role: RoleSource}.series()
	for i := 1; i <= 10; i++ {
		d.observe(rs, float64(i))
		clock = clock.Add(time.Minute)
	}
	s := summaryOf(t, d, "rs")
	require.NotNil(t, s)
	assert.Equal(t, uint64(10), s.GetSampleCount())
	assert.Equal(t, 55.0, s.GetSampleSum())
	// 12:10: the 12:00 sync is ten minutes old, out of the window; 2..10
	// are left (nearest rank: the 5th and the 9th of nine).
	assert.Equal(t, 6.0, quantileOf(s, 0.5))
	assert.Equal(t, 10.0, quantileOf(s, 0.9))
	assert.Equal(t, 10.0, quantileOf(s, 0.99))

	clock = clock.Add(maxAge)
	s = summaryOf(t, d, "rs")
	assert.Equal(t, uint64(10), s.GetSampleCount(), "the count is since the start")
	assert.True(t, math.IsNaN(quantileOf(s, 0.5)), "no sync in ten minutes: no quantile")

	for i := range 2 * maxRecent {
		d.observe(rs, float64(i))
	}
	assert.Len(t, d.series[rs].recent, maxRecent, "a CR syncing back to back keeps its latest")
	// The latest maxRecent: maxRecent..2*maxRecent-1.
	assert.Equal(t, float64(maxRecent+int(math.Ceil(0.99*maxRecent))-1), quantileOf(summaryOf(t, d, "rs"), 0.99))

	d.forget(rs)
	assert.Nil(t, summaryOf(t, d, "rs"))
}

// The reason durations exists: client_golang's summary costs tens of KB
// per series, which at thousands of CRs is most of the controller's heap.
func TestDurationsMemoryPerSeries(t *testing.T) {
	const n = 2000
	heap := func(fill func(name string)) uint64 {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for i := range n {
			fill(fmt.Sprintf("rs-%04d", i))
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		return (after.HeapAlloc - min(after.HeapAlloc, before.HeapAlloc)) / n
	}
	vec := prometheus.NewSummaryVec(prometheus.SummaryOpts{Name: "s", Objectives: map[float64]float64{0.5: 0.05, 0.9: 0.01, 0.99: 0.001}}, labels)
	summary := heap(func(name string) { vec.WithLabelValues(name, "ns", RoleSource, Method).Observe(1) })
	d := newDurations(time.Now)
	ours := heap(func(name string) { d.observe([4]string{name, "ns", RoleSource, Method}, 1) })
	t.Logf("bytes per series: client_golang summary %d, durations %d", summary, ours)
	assert.Less(t, ours*20, summary, "durations should cost under a twentieth of a summary per series")
	runtime.KeepAlive(vec)
	runtime.KeepAlive(d)
}
