package moverlog

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
)

// volsyncFilter is VolSync's rsync log filter (a fact of its mover: the
// lines it keeps of a successful source's log).
var volsyncFilter = regexp.MustCompile(`^\s*([sS]ent)\s.+([bB]ytes)\s.+([rR]eceived)\s.+([bB]ytes)|^\s*([tT]otal size)|^\s*([rR]sync completed in)`)

func filtered(logs string) []string {
	var out []string
	for _, l := range strings.Split(logs, "\n") {
		if volsyncFilter.MatchString(l) {
			out = append(out, l)
		}
	}
	return out
}

func result(summary string, sent, received int64, took time.Duration) *agentv1alpha1.SyncResult {
	start := metav1.NewTime(time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC))
	end := metav1.NewTime(start.Add(took))
	return &agentv1alpha1.SyncResult{Summary: summary, BytesSent: sent, BytesReceived: received, StartTime: &start, EndTime: &end}
}

func TestCompleted(t *testing.T) {
	rsyncStats := "Number of files: 31 (reg: 26, dir: 5)\nTotal bytes received: 529\n\n" +
		"sent 37,570,123 bytes  received 529 bytes  25,050,434.67 bytes/sec\ntotal size is 38,440,000  speedup is 1.02"
	cases := map[string]struct {
		res  *agentv1alpha1.SyncResult
		want []string // the whole logs, line by line
	}{
		"rsync ran: its lines first, then Ferry's": {
			res: result(rsyncStats, 37570123, 529, 1500*time.Millisecond),
			want: []string{"sent 37,570,123 bytes  received 529 bytes  25,050,434.67 bytes/sec", "total size is 38,440,000  speedup is 1.02",
				"Rsync completed in 1s", "headline", "Number of files: 31 (reg: 26, dir: 5)", "Total bytes received: 529"},
		},
		"skipped as unchanged: no rsync, its sent line from the counts": {
			res:  result("unchanged since the last sync: nothing to send", 0, 0, 40*time.Millisecond),
			want: []string{"sent 0 bytes  received 0 bytes  0.00 bytes/sec", "Rsync completed in 0s", "headline", "unchanged since the last sync: nothing to send"},
		},
		"a destination: the receiver's counts": {
			res:  result("", 2048, 1234567, 2*time.Second),
			want: []string{"sent 2,048 bytes  received 1,234,567 bytes  618,307.50 bytes/sec", "Rsync completed in 2s", "headline"},
		},
		"no times known": {
			res:  &agentv1alpha1.SyncResult{BytesSent: 5},
			want: []string{"sent 5 bytes  received 0 bytes  0.00 bytes/sec", "Rsync completed in 0s", "headline"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			logs := Completed(tc.res, "headline")
			assert.Equal(t, tc.want, strings.Split(logs, "\n"))
			kept := filtered(logs)
			assert.Regexp(t, `^sent `, kept[0], "VolSync's filter keeps the sent line first")
			assert.Regexp(t, `^Rsync completed in \d+s$`, kept[len(kept)-1])
		})
	}
}

func TestCommas(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -1234: "-1,234"} {
		assert.Equal(t, want, commas(n))
	}
}
