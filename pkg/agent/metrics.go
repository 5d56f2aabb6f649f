package agent

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
)

// Metric labels: every series carries the node, so that one query across
// the DaemonSet shows where time and bytes go; per-transfer series carry
// the CR (obj_namespace, obj_name, as VolSync labels its metrics: Prometheus
// owns namespace and name for the scrape target) and the role too.
var (
	crLabels = []string{"node", "obj_namespace", "obj_name", "role"}

	bytesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ferry_agent_bytes_total",
		Help: "Bytes of rsync protocol data moved by this node's transfers, by direction (sent, received).",
	}, append(crLabels, "direction"))
	filesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ferry_agent_files_transferred_total",
		Help: "Regular files whose data a source on this node sent.",
	}, crLabels)
	syncsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ferry_agent_syncs_total",
		Help: "Syncs ended on this node, by result (succeeded, failed).",
	}, append(crLabels, "result"))
	unchangedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ferry_agent_unchanged_syncs_total",
		Help: "Source syncs on this node that ran no rsync: the destination held the very tree, unchanged since its last sync.",
	}, crLabels)
	incrementalTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ferry_agent_incremental_syncs_total",
		Help: "Source syncs on this node that handed rsync only the entries changed since the last sync, the destination having confirmed it still held what that sync left.",
	}, crLabels)
	transferSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "ferry_agent_transfer_duration_seconds",
		Help:    "Duration of syncs on this node, from the transfer's start to its end.",
		Buckets: prometheus.ExponentialBuckets(0.25, 2, 14),
	}, crLabels)
	publishSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "ferry_agent_publish_duration_seconds",
		Help:    "Time to make a volume available on the node (stage and publish, or bind), by role.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 12),
	}, []string{"node", "role"})
	activeTransfers = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ferry_agent_active_transfers",
		Help: "Transfers running on this node, by role.",
	}, []string{"node", "role"})
	queuedTransfers = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ferry_agent_queued_transfers",
		Help: "Source transfers waiting for a free slot on this node.",
	}, []string{"node"})
	errorsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ferry_agent_errors_total",
		Help: "Errors on this node by cause: " + strings.Join(agentv1alpha1.Causes, ", ") + ".",
	}, append(crLabels, "cause"))
	refusedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ferry_agent_refused_total",
		Help: "Connections, handshakes, channels and transfers this node's ssh endpoint refused past its limits, by cause (" +
			strings.Join(refusalCauses, ", ") + ").",
	}, []string{"node", "cause"})
)

// refusalCauses are the endpoint's refusal causes.
var refusalCauses = []string{endpoint.RefusedConnections, endpoint.RefusedHandshakes, endpoint.RefusedPeer, endpoint.RefusedChannels,
	endpoint.RefusedTransfers, endpoint.RefusedDestinationTransfers}

// nodeSeries makes the node's own series exist from the agent's start, at
// 0: dashboards show a node that never queued or refused, and an alert sees
// the first refusal as an increase.
func nodeSeries(node string) {
	for _, cause := range refusalCauses {
		refusedTotal.WithLabelValues(node, cause)
	}
	queuedTransfers.WithLabelValues(node)
	for _, role := range []string{"source", "destination"} {
		activeTransfers.WithLabelValues(node, role)
	}
}

func init() {
	metrics.Registry.MustRegister(bytesTotal, filesTotal, syncsTotal, unchangedTotal, incrementalTotal, transferSeconds, publishSeconds,
		activeTransfers, queuedTransfers, errorsTotal, refusedTotal)
}
