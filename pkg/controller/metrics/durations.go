package metrics

import (
	"math"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ranks are the quantiles volsync_sync_duration_seconds reports, VolSync's.
var ranks = []float64{0.5, 0.9, 0.99}

const (
	// maxAge is how far back the quantiles look: client_golang's summary
	// default, which VolSync's summary has.
	maxAge = prometheus.DefMaxAge
	// maxRecent bounds a series' kept observations: a CR syncing back to
	// back (no trigger) may end hundreds of syncs in maxAge; the quantiles
	// of its latest maxRecent are its recent ones.
	maxRecent = 256
)

// durations is volsync_sync_duration_seconds: a summary per CR with the
// name, labels and quantiles of VolSync's, so that its dashboards read it.
// It is not client_golang's SummaryVec because that one keeps five quantile
// streams of 500 preallocated samples per series (~70 KB): 1 GiB of the
// controller's heap at 15,000 CRs (make scale's simulated nodes). A CR
// syncs at most a few times a minute, so its observations of the last
// maxAge are few: they are kept, and the quantiles are exact.
type durations struct {
	desc *prometheus.Desc
	now  func() time.Time

	mu     sync.Mutex
	series map[[4]string]*durationSeries
}

// durationSeries is one CR's summary.
type durationSeries struct {
	count  uint64
	sum    float64
	recent []observation // oldest first
}

type observation struct {
	at      time.Time
	seconds float64
}

func newDurations(now func() time.Time) *durations {
	return &durations{
		desc:   prometheus.NewDesc("volsync_sync_duration_seconds", "Duration of the sync interval in seconds", labels, nil),
		now:    now,
		series: map[[4]string]*durationSeries{},
	}
}

// observe records one sync's duration for the CR whose label values are v.
func (d *durations) observe(v [4]string, seconds float64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.series[v]
	if s == nil {
		s = &durationSeries{}
		d.series[v] = s
	}
	s.count++
	s.sum += seconds
	if len(s.recent) == maxRecent {
		s.recent = slices.Delete(s.recent, 0, 1)
	}
	s.recent = append(s.recent, observation{at: d.now(), seconds: seconds})
}

// forget drops a CR's series.
func (d *durations) forget(v [4]string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.series, v)
}

// Describe implements prometheus.Collector.
func (d *durations) Describe(ch chan<- *prometheus.Desc) { ch <- d.desc }

// Collect implements prometheus.Collector: each series' count and sum since
// the start, and its quantiles over the last maxAge (NaN when it has no
// sync in that time, as client_golang's summary says it).
func (d *durations) Collect(ch chan<- prometheus.Metric) {
	d.mu.Lock()
	defer d.mu.Unlock()
	cutoff := d.now().Add(-maxAge)
	for v, s := range d.series {
		keep := slices.IndexFunc(s.recent, func(o observation) bool { return o.at.After(cutoff) })
		if keep < 0 {
			keep = len(s.recent)
		}
		s.recent = slices.Delete(s.recent, 0, keep)
		values := make([]float64, len(s.recent))
		for i, o := range s.recent {
			values[i] = o.seconds
		}
		ch <- prometheus.MustNewConstSummary(d.desc, s.count, s.sum, quantiles(values, ranks), v[:]...)
	}
}

// quantiles are the nearest-rank quantiles of values (sorted in place):
// the smallest value with at least q of them at or below it; NaN for none.
func quantiles(values, qs []float64) map[float64]float64 {
	slices.Sort(values)
	out := make(map[float64]float64, len(qs))
	for _, q := range qs {
		if len(values) == 0 {
			out[q] = math.NaN()
			continue
		}
		rank := int(math.Ceil(q * float64(len(values))))
		out[q] = values[min(max(rank, 1), len(values))-1]
	}
	return out
}
