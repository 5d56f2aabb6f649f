// Command nodeagent is Ferry's node agent, run as a privileged DaemonSet: it
// mounts volumes through the node's CSI plugins and moves their data with
// rsync over ssh, as this node's MountAssignments say. main only turns flags
// and the downward API's environment into an agent.Config and calls
// agent.Run.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/api/resource"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/ferrysync/ferry/pkg/agent"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/csi"
	"github.com/ferrysync/ferry/pkg/kubelet"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
	"github.com/ferrysync/ferry/pkg/transfer/keepalive"
	"github.com/ferrysync/ferry/pkg/transfer/reexec"
)

func main() {
	reexec.Init()
	var cfg agent.Config
	flag.StringVar(&cfg.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (default: $NODE_NAME, from the downward API)")
	flag.StringVar(&cfg.Namespace, "namespace", os.Getenv("POD_NAMESPACE"), "Ferry's namespace, where assignments and key Secrets live (default: $POD_NAMESPACE)")
	flag.StringVar(&cfg.KubeletRoot, "kubelet-root", "/var/lib/kubelet", "kubelet's root directory: CSI plugin sockets and Ferry's mounts are under it")
	var endpoints stringList
	flag.Var(&endpoints, "csi-endpoint", "DRIVER=SOCKET: the node plugin socket of a CSI driver whose plugin the agent cannot find through kubelet's plugin registration (plugins_registry), as it finds all others; repeat for more drivers")
	flag.DurationVar(&cfg.CSICallTimeout, "csi-call-timeout", csi.DefaultCallTimeout, "bound on each call to a CSI node plugin, as kubelet bounds its own")
	flag.StringVar(&cfg.StateDir, "state-dir", "/var/lib/ferry", "the agent's own state directory")
	flag.StringVar(&cfg.SSHBindAddress, "ssh-bind-address", os.Getenv("NODE_IP"), "address destinations' ssh listeners bind to (default: $NODE_IP; empty: all)")
	flag.StringVar(&cfg.SSHAdvertiseAddress, "ssh-advertise-address", os.Getenv("NODE_IP"), "node address reported for destinations (default: $NODE_IP)")
	ports := flag.String("ssh-port-range", "", "ports destinations listen on, MIN-MAX (such as 30500-30999), so node firewalls can allow exactly them; empty: any port")
	flag.IntVar(&cfg.MaxTransfers, "max-transfers", 4, "source transfers that run at once on this node; more wait, Queued")
	maxBandwidth := flag.String("max-bandwidth", "", "cap on what this node's source transfers send together, bytes per second as a quantity (100Mi: 100 MiB/s); empty: none")
	flag.StringVar(&cfg.MetricsAddr, "metrics-bind-address", ":9810", "address of the Prometheus /metrics endpoint (0 disables it)")
	flag.StringVar(&cfg.ProbeAddr, "health-probe-bind-address", ":9811", "address of the /healthz and /readyz endpoints")
	flag.DurationVar(&cfg.GracePeriod, "grace-period", 30*time.Second, "how long running transfers may finish after SIGTERM before they are aborted")
	flag.DurationVar(&cfg.ProgressInterval, "progress-interval", 2*time.Second, "how often a running transfer's progress is written to its assignment")
	flag.DurationVar(&cfg.RetryBackoff, "retry-backoff", 2*time.Second, "first pause between a transfer's tries, doubled each time")
	flag.DurationVar(&cfg.Keepalive, "ssh-keepalive", keepalive.DefaultInterval,
		fmt.Sprintf("how often each end of a transfer asks the other for a sign of life; after %d unanswered, the connection is closed and the try fails (a network cut ends within minutes, not TCP's quarter of an hour)", keepalive.Missed))
	memory := flag.String("transfer-memory-limit", "2Gi", "memory limit of each transfer's own cgroup (rsync and its page cache); past it the transfer is killed and says so; 0: none")
	flag.Int64Var(&cfg.Transfer.Pids, "transfer-pids-limit", 64, "limit on processes and threads of each transfer's own cgroup; 0: none")
	flag.StringVar(&cfg.Rsync, "rsync", "", "the rsync binary, under /usr (default: rsync from PATH)")
	flag.DurationVar(&cfg.FullSyncInterval, "full-sync-interval", endpoint.DefaultFullSyncInterval,
		"how long the record of a replication's last sync lets the next one send nothing (tree unchanged) or only what changed; past it a sync runs rsync over the whole tree; 0: always")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	log := zap.New(zap.UseFlagOptions(&opts))
	ctrl.SetLogger(log)
	var err error
	if cfg.CSIEndpoints, err = kubelet.ParseEndpoints(endpoints); err != nil {
		fmt.Fprintln(os.Stderr, "nodeagent: --csi-endpoint:", err)
		os.Exit(2)
	}
	if cfg.Ports, err = agent.ParsePortRange(*ports); err != nil {
		fmt.Fprintln(os.Stderr, "nodeagent:", err)
		os.Exit(2)
	}
	q, err := resource.ParseQuantity(*memory)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nodeagent: --transfer-memory-limit %q: %v\n", *memory, err)
		os.Exit(2)
	}
	cfg.Transfer.MemoryBytes = q.Value()
	if *maxBandwidth != "" {
		if cfg.MaxBandwidth, err = volsyncv1alpha1.ParseBandwidth(*maxBandwidth); err != nil {
			fmt.Fprintf(os.Stderr, "nodeagent: --max-bandwidth: %v\n", err)
			os.Exit(2)
		}
	}
	if cfg.SSHAdvertiseAddress == "" {
		cfg.SSHAdvertiseAddress = cfg.SSHBindAddress
	}
	useHelper(log)

	if err := agent.Run(ctrl.SetupSignalHandler(), ctrl.GetConfigOrDie(), cfg, log); err != nil {
		fmt.Fprintln(os.Stderr, "nodeagent:", err)
		os.Exit(1)
	}
}

// useHelper starts helper processes from ferry-helper when it lies beside
// this executable (the image ships both): it starts ten times faster than
// the agent itself.
func useHelper(log logr.Logger) {
	self, err := os.Executable()
	if err != nil {
		return
	}
	helper := filepath.Join(filepath.Dir(self), "ferry-helper")
	if st, err := os.Stat(helper); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
		reexec.UseBinary(helper)
		log.Info("helper processes start from ferry-helper", "path", helper)
	}
}

// stringList is a flag that may be given more than once.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	*l = append(*l, v)
	return nil
}
