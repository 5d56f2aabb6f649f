package destination

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
)

var t0 = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

func mt(d time.Duration) *metav1.Time { t := metav1.NewTime(t0.Add(d)); return &t }

func TestOutcome(t *testing.T) {
	ma := func(gen int64, phase agentv1alpha1.Phase, last *agentv1alpha1.SyncResult) *agentv1alpha1.MountAssignment {
		return &agentv1alpha1.MountAssignment{Spec: agentv1alpha1.MountAssignmentSpec{NodeName: "n1", SyncGeneration: gen},
			Status: agentv1alpha1.MountAssignmentStatus{Phase: phase, LastSync: last}}
	}
	cases := map[string]struct {
		ma              *agentv1alpha1.MountAssignment
		start           *metav1.Time
		done, succeeded bool
		logs, waiting   string
	}{
		"serving, nothing yet": {ma: ma(1, agentv1alpha1.PhaseMounted, nil), start: mt(0), waiting: "waiting for the source to connect"},
		"receiving":            {ma: ma(1, agentv1alpha1.PhaseTransferring, nil), start: mt(0), waiting: "receiving data on node n1"},
		"this generation succeeded": {ma: ma(2, agentv1alpha1.PhaseHolding, &agentv1alpha1.SyncResult{Generation: 2, Succeeded: true, BytesReceived: 7, EndTime: mt(time.Minute)}),
			start: mt(0), done: true, succeeded: true, logs: "received 7 bytes"},
		"the last generation's success is not this sync's": {ma: ma(3, agentv1alpha1.PhaseMounted, &agentv1alpha1.SyncResult{Generation: 2, Succeeded: true}),
			start: mt(0), waiting: "waiting for the source to connect"},
		"a failure in this cycle": {ma: ma(2, agentv1alpha1.PhaseMounted, &agentv1alpha1.SyncResult{Generation: 2, Error: "the source ended the sync with status 12", EndTime: mt(time.Minute)}),
			start: mt(0), done: true, logs: "status 12"},
		"a failure before this cycle was reported already": {ma: ma(2, agentv1alpha1.PhaseMounted, &agentv1alpha1.SyncResult{Generation: 2, Error: "x", EndTime: mt(-time.Minute)}),
			start: mt(0), waiting: "waiting for the source to connect"},
		"not served yet": {ma: ma(1, agentv1alpha1.PhaseFailed, nil), start: mt(0), waiting: "waiting for the agent on node n1 to serve the volume"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			res := outcome(tc.ma, tc.start)
			assert.Equal(t, tc.done, res.Done, "done")
			assert.Equal(t, tc.succeeded, res.Succeeded, "succeeded")
			assert.Contains(t, res.Logs, tc.logs)
			assert.Contains(t, res.Waiting, tc.waiting)
		})
	}
}

func TestSnapshotName(t *testing.T) {
	assert.Equal(t, "volsync-db-dst-20261126100000", snapshotName("volsync-db-dst", t0))
	assert.Equal(t, "volsync-db-dst-20261126100000", snapshotName("volsync-db-dst", t0.In(time.FixedZone("x", 3600))), "UTC always")
}

func TestAddress(t *testing.T) {
	cluster := &corev1.Service{Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.96.0.7"}}
	assert.Equal(t, "10.96.0.7", address(cluster))
	lb := &corev1.Service{Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.8"}}
	assert.Equal(t, "", address(lb), "a load balancer without ingress has no address yet")
	lb.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{Hostname: "lb.example"}}
	assert.Equal(t, "lb.example", address(lb))
	lb.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "192.0.2.4"}}
	assert.Equal(t, "192.0.2.4", address(lb))
}

func TestEndpointOf(t *testing.T) {
	ep := &agentv1alpha1.Endpoint{Address: "10.0.0.1", Port: 2222}
	ma := &agentv1alpha1.MountAssignment{ObjectMeta: metav1.ObjectMeta{Generation: 2},
		Status: agentv1alpha1.MountAssignmentStatus{ObservedGeneration: 2, Phase: agentv1alpha1.PhaseMounted, Endpoint: ep}}
	assert.Equal(t, ep, endpointOf(ma))
	ma.Status.Phase = agentv1alpha1.PhaseFailed
	assert.Nil(t, endpointOf(ma), "not served")
	ma.Status.Phase, ma.Status.ObservedGeneration = agentv1alpha1.PhaseHolding, 1
	assert.Equal(t, ep, endpointOf(ma), "held, and about to accept the next sync: still served")
	assert.Nil(t, endpointOf(nil))
}
