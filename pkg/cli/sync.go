package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/moby/term"
	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/bytesize"
)

func newSyncCommand(o *options) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "sync NAME",
		Short: "Sync a ReplicationSource now and wait for the result, showing its progress",
		Long: "sync sets a new spec.trigger.manual on the ReplicationSource NAME, shows the transfer's\n" +
			"progress (bytes, files, rate) while it runs, and exits when status.lastManualSync shows the\n" +
			"sync completed, or non-zero with the condition's message when it failed.",
		Example: "  kubectl ferry sync mysql-pv-claim -n source",
		Args:    cobra.ExactArgs(1),
		RunE:    func(cmd *cobra.Command, args []string) error { return o.sync(cmd.Context(), args[0], timeout) },
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "how long to wait for the sync")
	return cmd
}

// sync triggers the source and follows it to its end.
func (o *options) sync(ctx context.Context, name string, timeout time.Duration) error {
	c, ns, err := o.source()
	if err != nil {
		return err
	}
	rs := &volsyncv1alpha1.ReplicationSource{}
	key := client.ObjectKey{Namespace: ns, Name: name}
	if err := c.Get(ctx, key, rs); err != nil {
		return fmt.Errorf("replicationsource %s/%s: %w", ns, name, err)
	}
	value := "kubectl-ferry-" + time.Now().UTC().Format("20060102T150405.000")
	orig := rs.DeepCopy()
	if rs.Spec.Trigger == nil {
		rs.Spec.Trigger = &volsyncv1alpha1.TriggerSpec{}
	}
	rs.Spec.Trigger.Manual = value
	if err := c.Patch(ctx, rs, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("trigger %s/%s: %w", ns, name, err)
	}
	gen, started := rs.Generation, time.Now()
	fmt.Fprintf(o.streams.Out, "replicationsource %s/%s: sync %s asked for\n", ns, name, value)
	line := newLiveLine(o.streams.Out)
	var outcome syncOutcome
	err = waitFor(ctx, c, key, rs, o.poll, timeout, "sync "+value, func(rs *volsyncv1alpha1.ReplicationSource) bool {
		outcome = observeSync(rs, value, gen, time.Since(started))
		line.show(outcome.line)
		return outcome.done
	})
	line.end()
	if err != nil {
		return err
	}
	if outcome.failed != "" {
		return errors.New(outcome.failed)
	}
	return nil
}

// syncOutcome is what a source's status says of the manual sync asked for.
type syncOutcome struct {
	// done: the sync completed or failed (failed says why).
	done   bool
	failed string
	// line is what to show now.
	line string
}

// observeSync reads the source's status for manual sync value, asked for
// with the patch that made generation gen, elapsed ago. A condition counts
// only once the controller has seen gen: until then it is an older
// sync's.
func observeSync(rs *volsyncv1alpha1.ReplicationSource, value string, gen int64, elapsed time.Duration) syncOutcome {
	st := rs.Status.SyncStatus
	clock := elapsed.Round(time.Second).String()
	if st.LastManualSync == value {
		line := "synced"
		if st.LastSyncDuration != nil {
			line += " in " + st.LastSyncDuration.Round(time.Millisecond).String()
		}
		if st.LatestMoverStatus != nil {
			if first, _, _ := strings.Cut(strings.TrimSpace(st.LatestMoverStatus.Logs), "\n"); first != "" {
				line += ": " + first
			}
		}
		return syncOutcome{done: true, line: line}
	}
	if c := meta.FindStatusCondition(st.Conditions, volsyncv1alpha1.ConditionReconciled); c != nil && c.ObservedGeneration >= gen && c.Status == "False" {
		return syncOutcome{done: true, failed: "the ReplicationSource is not valid: " + c.Message, line: "failed: " + c.Message}
	}
	c := meta.FindStatusCondition(st.Conditions, volsyncv1alpha1.ConditionSynchronizing)
	if c != nil && c.ObservedGeneration >= gen && c.Reason == volsyncv1alpha1.SynchronizingReasonError {
		return syncOutcome{done: true, failed: "the sync failed: " + c.Message, line: "failed: " + c.Message}
	}
	if p := st.Progress; p != nil {
		return syncOutcome{line: fmt.Sprintf("%s  %s, %d files, %s/s  try %d on %s", clock, bytesize.Format(p.BytesDone), p.FilesDone,
			bytesize.Format(p.BytesPerSecond), max(p.Attempt, 1), p.Node)}
	}
	if c != nil && c.Message != "" {
		return syncOutcome{line: clock + "  " + c.Message}
	}
	return syncOutcome{line: clock + "  waiting for the sync to start"}
}

// liveLine shows a changing line: rewritten in place on a terminal, one
// line per change elsewhere (a log, a pipe).
type liveLine struct {
	out  io.Writer
	tty  bool
	last string
}

func newLiveLine(out io.Writer) *liveLine {
	f, ok := out.(*os.File)
	return &liveLine{out: out, tty: ok && term.IsTerminal(f.Fd())}
}

// show writes s if it differs from what is shown.
func (l *liveLine) show(s string) {
	if s == l.last {
		return
	}
	l.last = s
	if l.tty {
		fmt.Fprintf(l.out, "\r\033[K%s", s)
		return
	}
	fmt.Fprintln(l.out, s)
}

// end finishes the line on a terminal.
func (l *liveLine) end() {
	if l.tty && l.last != "" {
		fmt.Fprintln(l.out)
	}
}
