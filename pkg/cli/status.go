package cli

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/util/duration"
	"sigs.k8s.io/controller-runtime/pkg/client"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/bytesize"
)

func newStatusCommand(o *options) *cobra.Command {
	var watch, all bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "One table of the sources and destinations of both clusters",
		Long: "status lists the ReplicationSources of the source's namespace (-n; -A for all) and the\n" +
			"ReplicationDestinations of the destination's (--to-namespace), with when each last synced,\n" +
			"how long it took, when the next starts, the bytes moved and their rate, its condition and\n" +
			"how old the replica's data is. -w prints the table again whenever it changes.",
		Example: "  kubectl ferry status -n source --to-context dr --to-namespace dest -w",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.status(cmd.Context(), all, watch)
		},
	}
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "print the table again whenever it changes")
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "every namespace of both clusters")
	return cmd
}

// status prints the table once, or on every change until interrupted.
func (o *options) status(ctx context.Context, all, watch bool) error {
	s, err := o.sides()
	if err != nil {
		return err
	}
	src, srcNS, dst, dstNS := s.src, s.srcNS, s.dst, s.dstNS
	if all {
		srcNS, dstNS = "", ""
	}
	last := ""
	for {
		rows, err := statusRows(ctx, src, dst, srcNS, dstNS, time.Now())
		if err != nil {
			return err
		}
		var b strings.Builder
		writeTable(&b, rows)
		if table := b.String(); table != last {
			if last != "" {
				fmt.Fprintln(o.streams.Out)
			}
			fmt.Fprint(o.streams.Out, table)
			last = table
		}
		if !watch {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * time.Second):
		}
	}
}

// statusHeader names statusRow's columns.
var statusHeader = []string{"SIDE", "NAMESPACE", "NAME", "LAST SYNC", "DURATION", "NEXT", "MOVED", "RATE", "CONDITION", "OUT OF SYNC"}

// statusRows reads both sides' CRs and makes their rows, sources first.
func statusRows(ctx context.Context, src, dst client.Client, srcNS, dstNS string, now time.Time) ([][]string, error) {
	sources := &volsyncv1alpha1.ReplicationSourceList{}
	if err := src.List(ctx, sources, client.InNamespace(srcNS)); err != nil {
		return nil, fmt.Errorf("list the source's ReplicationSources: %w", err)
	}
	dests := &volsyncv1alpha1.ReplicationDestinationList{}
	if err := dst.List(ctx, dests, client.InNamespace(dstNS)); err != nil {
		return nil, fmt.Errorf("list the destination's ReplicationDestinations: %w", err)
	}
	var rows [][]string
	for _, rs := range sources.Items {
		rows = append(rows, statusRow("source", rs.Namespace, rs.Name, &rs.Status.SyncStatus, now))
	}
	for _, rd := range dests.Items {
		rows = append(rows, statusRow("destination", rd.Namespace, rd.Name, &rd.Status.SyncStatus, now))
	}
	return rows, nil
}

// statusRow is one CR's line of the table at time now.
func statusRow(side, namespace, name string, st *volsyncv1alpha1.SyncStatus, now time.Time) []string {
	row := []string{side, namespace, name, "never", "-", "-", "-", "-", "-", "-"}
	if st.LastSyncTime != nil {
		row[3] = duration.HumanDuration(now.Sub(st.LastSyncTime.Time)) + " ago"
	}
	if st.LastSyncDuration != nil {
		row[4] = st.LastSyncDuration.Round(time.Millisecond).String()
		if st.LastSyncTime != nil {
			// The replica holds the data as it was when that sync started.
			row[9] = duration.HumanDuration(now.Sub(st.LastSyncTime.Add(-st.LastSyncDuration.Duration)))
		}
	}
	switch {
	case st.NextSyncTime != nil && st.NextSyncTime.After(now):
		row[5] = "in " + duration.HumanDuration(st.NextSyncTime.Sub(now))
	case st.NextSyncTime != nil:
		row[5] = "due"
	}
	if p := st.Progress; p != nil {
		row[6], row[7] = bytesize.Format(p.BytesDone), bytesize.Format(p.BytesPerSecond)+"/s"
	} else if st.LatestMoverStatus != nil {
		if moved, rate, ok := transferLine(st.LatestMoverStatus.Logs, side == "source"); ok {
			row[6], row[7] = bytesize.Format(moved), bytesize.Format(rate)+"/s"
		}
	}
	if c := meta.FindStatusCondition(st.Conditions, volsyncv1alpha1.ConditionReconciled); c != nil && c.Status == "False" {
		row[8] = "Invalid: " + c.Message
	} else if c := meta.FindStatusCondition(st.Conditions, volsyncv1alpha1.ConditionSynchronizing); c != nil {
		row[8] = c.Reason
		if c.Reason == volsyncv1alpha1.SynchronizingReasonError {
			row[8] += ": " + c.Message
		}
	}
	return row
}

// rsyncTotals is rsync's "sent N bytes  received M bytes  R bytes/sec",
// which Ferry's and VolSync's mover logs both carry.
var rsyncTotals = regexp.MustCompile(`sent ([\d,]+) bytes\s+received ([\d,]+) bytes\s+([\d,.]+) bytes/sec`)

// transferLine reads the bytes a sync moved (sent, for a source; received,
// for a destination) and its rate from its mover logs.
func transferLine(logs string, sent bool) (moved, rate int64, ok bool) {
	m := rsyncTotals.FindStringSubmatch(logs)
	if m == nil {
		return 0, 0, false
	}
	num := func(s string) int64 {
		f, _ := strconv.ParseFloat(strings.ReplaceAll(s, ",", ""), 64)
		return int64(f)
	}
	moved = num(m[2])
	if sent {
		moved = num(m[1])
	}
	return moved, num(m[3]), true
}

// writeTable writes rows under statusHeader in aligned columns.
func writeTable(out io.Writer, rows [][]string) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, strings.Join(statusHeader, "\t"))
	for _, r := range rows {
		fmt.Fprintln(w, strings.Join(r, "\t"))
	}
	_ = w.Flush()
}
