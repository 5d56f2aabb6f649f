// Package metrics holds the controller's Prometheus metrics, named and
// labelled as VolSync's so that dashboards and alerts written for VolSync
// work against Ferry: labels obj_name, obj_namespace, role (source or
// destination) and method (the mover: rsync).
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Method is the mover label value of every series: Ferry serves rsync.
const Method = "rsync"

// Roles, as the role label says them.
const (
	RoleSource      = "source"
	RoleDestination = "destination"
)

var labels = []string{"obj_name", "obj_namespace", "role", "method"}

var (
	syncDuration    = newDurations(time.Now)
	missedIntervals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "volsync_missed_intervals_total",
		Help: "The number of times a synchronization failed to complete before the next scheduled start",
	}, labels)
	outOfSync = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "volsync_volume_out_of_sync",
		Help: "Set to 1 if the volume is not properly synchronized",
	}, labels)
)

func init() {
	metrics.Registry.MustRegister(syncDuration, missedIntervals, outOfSync)
}

// Object is one CR's series.
type Object struct{ Name, Namespace, Role string }

func (o Object) values() []string { v := o.series(); return v[:] }

// series are the label values as syncDuration keys them.
func (o Object) series() [4]string { return [4]string{o.Name, o.Namespace, o.Role, Method} }

// Synced records a completed sync and that the volume is in sync. The
// missed-intervals series exists from then on (at 0 until one is
// missed), so that an alert on its increase sees a CR that never missed.
func (o Object) Synced(d time.Duration) {
	syncDuration.observe(o.series(), d.Seconds())
	missedIntervals.WithLabelValues(o.values()...)
	outOfSync.WithLabelValues(o.values()...).Set(0)
}

// OutOfSync records that the volume is not in sync (a sync failed, or one
// could not start).
func (o Object) OutOfSync() { outOfSync.WithLabelValues(o.values()...).Set(1) }

// Missed counts scheduled starts that passed while a sync still ran.
func (o Object) Missed(n int) {
	if n > 0 {
		missedIntervals.WithLabelValues(o.values()...).Add(float64(n))
		o.OutOfSync()
	}
}

// Forget drops the CR's series when it is deleted.
func (o Object) Forget() {
	syncDuration.forget(o.series())
	missedIntervals.DeleteLabelValues(o.values()...)
	outOfSync.DeleteLabelValues(o.values()...)
}
