package assign

import (
	"errors"
	"fmt"
	"testing"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func node(name string, labels map[string]string) corev1.Node {
	return corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func csiNode(name string, drivers ...string) storagev1.CSINode {
	n := storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: name}}
	for _, d := range drivers {
		n.Spec.Drivers = append(n.Spec.Drivers, storagev1.CSINodeDriver{Name: d})
	}
	return n
}

func pinned(zone string) *corev1.PersistentVolume {
	return &corev1.PersistentVolume{Spec: corev1.PersistentVolumeSpec{NodeAffinity: &corev1.VolumeNodeAffinity{
		Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
			{Key: "zone", Operator: corev1.NodeSelectorOpIn, Values: []string{zone}}}}}}}}}
}

// limited is a CSINode entry of driver with an attach limit.
func limited(name, driver string, count int32) storagev1.CSINode {
	n := csiNode(name, driver)
	n.Spec.Drivers[0].Allocatable = &storagev1.VolumeNodeResources{Count: &count}
	return n
}

func TestPlace(t *testing.T) {
	nodes := []corev1.Node{node("a", map[string]string{"zone": "1"}), node("b", map[string]string{"zone": "2"}),
		node("c", map[string]string{"zone": "2"})}
	cordoned := node("d", map[string]string{"zone": "3"})
	cordoned.Spec.Unschedulable = true
	tainted := node("e", map[string]string{"zone": "4"})
	tainted.Spec.Taints = []corev1.Taint{{Key: "dedicated", Value: "db", Effect: corev1.TaintEffectNoSchedule},
		{Key: "soft", Effect: corev1.TaintEffectPreferNoSchedule}}
	soft := node("f", map[string]string{"zone": "5"})
	soft.Spec.Taints = []corev1.Taint{{Key: "soft", Effect: corev1.TaintEffectPreferNoSchedule}}
	nodes = append(nodes, cordoned, tainted, soft)
	all := []storagev1.CSINode{csiNode("a", "drv"), csiNode("b", "drv"), csiNode("c", "drv", "other"), csiNode("d", "drv"),
		csiNode("e", "drv"), csiNode("f", "drv")}
	ebs := []storagev1.CSINode{limited("a", "ebs", 2), limited("b", "ebs", 2), limited("c", "ebs", 3)}
	// b is full with kubelet's and Ferry's attachments; c has one free.
	full := map[string]map[string]int{"a": {"ebs": 1, "drv": 5}, "b": {"ebs": 2}, "c": {"ebs": 3}}
	cases := map[string]struct {
		pv       *corev1.PersistentVolume
		driver   string
		csiNodes []storagev1.CSINode
		attached map[string]map[string]int
		prefer   []string
		want     []string // any of
		err      string
	}{
		"the PV's affinity decides":               {pv: pinned("1"), driver: "drv", csiNodes: all, want: []string{"a"}},
		"affinity with two nodes, prefer one":     {pv: pinned("2"), driver: "drv", csiNodes: all, prefer: []string{"c"}, want: []string{"c"}},
		"a preference the affinity rules out":     {pv: pinned("1"), driver: "drv", csiNodes: all, prefer: []string{"b"}, want: []string{"a"}},
		"no affinity: any node with the driver":   {driver: "drv", csiNodes: all, want: []string{"a", "b", "c", "f"}},
		"only nodes whose CSINode has the driver": {driver: "other", csiNodes: all, want: []string{"c"}},
		"a cordoned node is not chosen":           {pv: pinned("3"), driver: "drv", csiNodes: all, err: "d: cordoned"},
		"a NoSchedule taint is not tolerated":     {pv: pinned("4"), driver: "drv", csiNodes: all, err: "e: tainted dedicated=db:NoSchedule"},
		"where the volume is, a taint is no bar":  {pv: pinned("4"), driver: "drv", csiNodes: all, prefer: []string{"e"}, want: []string{"e"}},
		"PreferNoSchedule is no bar":              {pv: pinned("5"), driver: "drv", csiNodes: all, want: []string{"f"}},
		"no node runs the driver":                 {driver: "missing", csiNodes: all, err: "no node runs the CSI driver missing"},
		"attach limits, counted per driver":       {driver: "ebs", csiNodes: ebs, attached: full, want: []string{"a"}},
		"every node at its attach limit": {driver: "ebs", csiNodes: ebs, attached: map[string]map[string]int{"a": {"ebs": 2}, "b": {"ebs": 2}, "c": {"ebs": 3}},
			err: "a: at its attach limit for ebs (2 of 2); b: at its attach limit for ebs (2 of 2); c: at its attach limit for ebs (3 of 3)"},
		"where the volume is attached already, the limit has counted it": {driver: "ebs", csiNodes: ebs, attached: full, prefer: []string{"b"}, want: []string{"b"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			cand := Candidates{Nodes: nodes, CSINodes: tc.csiNodes, Attached: tc.attached}
			got, err := Place(tc.pv, tc.driver, "ns/claim", cand, tc.prefer...)
			if tc.err != "" {
				require.ErrorIs(t, err, ErrNoNode)
				assert.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Contains(t, tc.want, got)
			again, _ := Place(tc.pv, tc.driver, "ns/claim", cand, tc.prefer...)
			assert.Equal(t, got, again, "the same volume lands on the same node")
		})
	}
}

func TestRunAs(t *testing.T) {
	id := func(n int64) *int64 { return &n }
	for _, tc := range []struct {
		name       string
		psc        *corev1.PodSecurityContext
		privileged bool
		want       *agentv1alpha1.RunAs
		err        string
	}{
		{name: "none: the agent's default"},
		{name: "no user: the agent's default", psc: &corev1.PodSecurityContext{FSGroup: id(5)}},
		{name: "the user, as its own group", psc: &corev1.PodSecurityContext{RunAsUser: id(1000)}, want: &agentv1alpha1.RunAs{UID: 1000, GID: 1000}},
		{name: "fsGroup", psc: &corev1.PodSecurityContext{RunAsUser: id(1000), FSGroup: id(2000)}, want: &agentv1alpha1.RunAs{UID: 1000, GID: 2000}},
		{name: "runAsGroup before fsGroup", psc: &corev1.PodSecurityContext{RunAsUser: id(1000), RunAsGroup: id(3000), FSGroup: id(2000)},
			want: &agentv1alpha1.RunAs{UID: 1000, GID: 3000}},
		{name: "root without privilege", psc: &corev1.PodSecurityContext{RunAsUser: id(0)}, err: "uid 0, gid 0"},
		{name: "group 0 without privilege", psc: &corev1.PodSecurityContext{RunAsUser: id(4321), RunAsGroup: id(0)}, err: "uid 4321, gid 0"},
		{name: "fsGroup 0 without privilege", psc: &corev1.PodSecurityContext{RunAsUser: id(4321), FSGroup: id(0)}, err: "privileged-movers"},
		{name: "privileged: root, whatever it says", psc: &corev1.PodSecurityContext{RunAsUser: id(0)}, privileged: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := RunAs(tc.psc, tc.privileged)
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestLimits(t *testing.T) {
	assert.Nil(t, Limits(nil))
	assert.Nil(t, Limits(&corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")}}),
		"requests have no effect")
	assert.Equal(t, corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi"), corev1.ResourceCPU: resource.MustParse("500m")},
		Limits(&corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi"),
			corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceEphemeralStorage: resource.MustParse("1Gi")}}),
		"cpu and memory, not ephemeral storage (a transfer writes into its volume)")
}

func TestTrimPod(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", Labels: map[string]string{"a": "b"}},
		Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "busybox"}},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "replica"}}},
				{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	got, err := TrimPod(pod)
	require.NoError(t, err)
	trimmed := got.(*corev1.Pod)
	assert.Equal(t, "n1", trimmed.Spec.NodeName)
	assert.Equal(t, corev1.PodRunning, trimmed.Status.Phase)
	assert.Equal(t, []string{"replica"}, ClaimsOf(trimmed))
	assert.Empty(t, trimmed.Spec.Containers, "nothing else is cached")
	assert.Empty(t, trimmed.Labels)
}

// TestUnplaceable: an error the user must fix is recognised as such by
// both kinds and keeps its own words and cause.
func TestUnplaceable(t *testing.T) {
	err := unplaceable{fmt.Errorf("%w: no node runs the CSI driver x", ErrNoNode)}
	assert.ErrorIs(t, err, ErrUnplaceable)
	assert.ErrorIs(t, err, ErrNoNode)
	assert.Equal(t, "no node can mount the volume: no node runs the CSI driver x", err.Error())
	assert.NotErrorIs(t, fmt.Errorf("list nodes: %w", errors.New("timeout")), ErrUnplaceable)
}
