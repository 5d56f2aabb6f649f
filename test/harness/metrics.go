package harness

import (
	"fmt"
	"io"
	"iter"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/stretchr/testify/require"
)

// Metric reads one series' value from the process's /metrics; labels must
// all match, and a series that does not exist fails the test.
func (p *Proc) Metric(name string, labels map[string]string) float64 {
	p.t.Helper()
	for line, value := range p.series(name) {
		if hasLabels(line, labels) {
			return value
		}
	}
	require.Failf(p.t, "no such series", "%s has no series %s%v: a misspelt name or label would otherwise read as a value", p.Metrics, name, labels)
	return 0
}

// MetricSum adds up every series of a metric that has all of labels (nil:
// every series; 0 when none has).
func (p *Proc) MetricSum(name string, labels map[string]string) float64 {
	p.t.Helper()
	sum := 0.0
	for line, value := range p.series(name) {
		if hasLabels(line, labels) {
			sum += value
		}
	}
	return sum
}

// hasLabels says whether a sample line carries every one of labels.
func hasLabels(line string, labels map[string]string) bool {
	for k, v := range labels {
		if !strings.Contains(line, fmt.Sprintf("%s=%q", k, v)) {
			return false
		}
	}
	return true
}

// scraper reads /metrics without keeping connections open: an idle
// keep-alive connection is a goroutine in the scraped process for 90
// seconds, which the soak's leak counts would take for the process's own
// (seen in CI: an agent's goroutines 77 → 78 while two scrapes overlapped).
var scraper = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}

// series reads the process's /metrics and yields each sample line of the
// metric name with its value.
func (p *Proc) series(name string) iter.Seq2[string, float64] {
	p.t.Helper()
	resp, err := scraper.Get(p.Metrics)
	require.NoError(p.t, err)
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(p.t, err)
	return func(yield func(string, float64) bool) {
		for line := range strings.Lines(string(raw)) {
			line = strings.TrimSuffix(line, "\n")
			if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
				continue
			}
			f, err := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
			require.NoError(p.t, err, line)
			if !yield(line, f) {
				return
			}
		}
	}
}
