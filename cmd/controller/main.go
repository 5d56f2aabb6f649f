// Command controller is Ferry's central controller: it reconciles VolSync's
// ReplicationSource and ReplicationDestination and hands mount assignments to
// the node agents. main only turns flags into a Config and calls Run.
package main

import (
	"flag"
	"fmt"
	"os"

	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	ctrl "sigs.k8s.io/controller-runtime"
)

func main() {
	var cfg Config
	flag.StringVar(&cfg.MetricsAddr, "metrics-bind-address", ":8080", "address the Prometheus /metrics endpoint listens on (0 disables it)")
	flag.StringVar(&cfg.ProbeAddr, "health-probe-bind-address", ":8081", "address of the /healthz and /readyz endpoints")
	flag.BoolVar(&cfg.LeaderElect, "leader-elect", true, "elect a leader so that only one replica reconciles")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))

	if err := Run(ctrl.SetupSignalHandler(), cfg); err != nil {
		fmt.Fprintln(os.Stderr, "controller:", err)
		os.Exit(1)
	}
}
