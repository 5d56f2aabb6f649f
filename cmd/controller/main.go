// Command controller is Ferry's central controller: it reconciles VolSync's
// ReplicationSource and ReplicationDestination and hands mount assignments to
// the node agents. main only turns flags into a controller.Config and calls
// controller.Run.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/ferrysync/ferry/pkg/controller"
	"github.com/ferrysync/ferry/pkg/controller/source"
)

func main() {
	var cfg controller.Config
	flag.StringVar(&cfg.Namespace, "namespace", os.Getenv("POD_NAMESPACE"), "Ferry's namespace, where assignments and key copies live (default: $POD_NAMESPACE)")
	flag.StringVar(&cfg.MetricsAddr, "metrics-bind-address", ":8080", "address the Prometheus /metrics endpoint listens on (0 disables it)")
	flag.StringVar(&cfg.ProbeAddr, "health-probe-bind-address", ":8081", "address of the /healthz and /readyz endpoints")
	flag.StringVar(&cfg.PprofAddr, "pprof-bind-address", "", "address Go's /debug/pprof listens on (empty: off)")
	flag.BoolVar(&cfg.LeaderElect, "leader-elect", true, "elect a leader so that only one replica reconciles")
	flag.DurationVar(&cfg.RetryAfter, "retry-after", time.Minute, "pause before a failed sync is tried again when no schedule says when")
	flag.DurationVar(&cfg.Poll, "poll-interval", 2*time.Second, "how often waits that no watch covers (attachments, progress) are looked at")
	flag.DurationVar(&cfg.CopyTriggerTimeout, "copy-trigger-timeout", source.DefaultCopyTriggerTimeout, "how long a sync waits for a claim's volsync.backube/copy-trigger before latestMoverStatus and an event say it is late (it waits on), as VolSync")
	flag.DurationVar(&cfg.Recheck, "recheck-interval", 30*time.Second, "how often a CR whose input must be fixed (a missing Secret, PVC or class) is looked at again")
	flag.DurationVar(&cfg.KeyRefresh, "key-refresh-interval", 5*time.Minute, "how soon a key Secret the user replaced is read again and mirrored for the agents (Secrets are read by name, not watched)")
	flag.IntVar(&cfg.Workers, "workers", 8, "how many ReplicationSources (and, apart, ReplicationDestinations) are reconciled at once")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	log := zap.New(zap.UseFlagOptions(&opts))
	ctrl.SetLogger(log)

	if err := controller.Run(ctrl.SetupSignalHandler(), ctrl.GetConfigOrDie(), cfg, log); err != nil {
		fmt.Fprintln(os.Stderr, "controller:", err)
		os.Exit(1)
	}
}
