// Package moverlog writes a sync's latestMoverStatus.logs the way VolSync's
// rsync mover leaves them, so that the scripts and e2e checks that read
// VolSync's logs read Ferry's: rsync's "sent ... bytes  received ... bytes"
// and "total size is ..." lines and the mover's "Rsync completed in <N>s",
// in that order, first. Ferry's own summary follows them. A line rsync did
// not print (a sync skipped as unchanged runs no rsync; a destination sees
// no client statistics) is written from the agent's own counts, in rsync's
// format.
package moverlog

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
)

// The lines VolSync's log filter keeps.
var (
	sentLine  = regexp.MustCompile(`^\s*[sS]ent\s.+[bB]ytes\s.+[rR]eceived\s.+[bB]ytes`)
	totalLine = regexp.MustCompile(`^\s*[tT]otal size`)
)

// Completed is the logs of a completed sync: VolSync's lines from the
// result, then headline (Ferry's one-line account), then the rest of the
// result's summary.
func Completed(ls *agentv1alpha1.SyncResult, headline string) string {
	var sent, total string
	var rest []string
	for _, line := range strings.Split(ls.Summary, "\n") {
		switch {
		case sent == "" && sentLine.MatchString(line):
			sent = strings.TrimSpace(line)
		case total == "" && totalLine.MatchString(line):
			total = strings.TrimSpace(line)
		case strings.TrimSpace(line) != "":
			rest = append(rest, line)
		}
	}
	took := duration(ls)
	if sent == "" {
		sent = fmt.Sprintf("sent %s bytes  received %s bytes  %s bytes/sec",
			commas(ls.BytesSent), commas(ls.BytesReceived), rate(ls.BytesSent+ls.BytesReceived, took))
	}
	lines := []string{sent}
	if total != "" {
		lines = append(lines, total)
	}
	lines = append(lines, fmt.Sprintf("Rsync completed in %ds", int64(took.Seconds())), headline)
	return strings.Join(append(lines, rest...), "\n")
}

// duration is how long the sync's transfer took (0 when unknown).
func duration(ls *agentv1alpha1.SyncResult) time.Duration {
	if ls.StartTime == nil || ls.EndTime == nil || ls.EndTime.Before(ls.StartTime) {
		return 0
	}
	return ls.EndTime.Sub(ls.StartTime.Time)
}

// rate is rsync's bytes/sec figure: two decimals, thousands separated.
func rate(n int64, d time.Duration) string {
	per := 0.0
	if d > 0 {
		per = float64(n) / d.Seconds()
	}
	s := strconv.FormatFloat(per, 'f', 2, 64)
	whole, frac, _ := strings.Cut(s, ".")
	w, _ := strconv.ParseInt(whole, 10, 64)
	return commas(w) + "." + frac
}

// commas writes n with thousands separated by commas, as rsync does.
func commas(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
