package assign

import (
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

func TestPlace(t *testing.T) {
	nodes := []corev1.Node{node("a", map[string]string{"zone": "1"}), node("b", map[string]string{"zone": "2"}),
		node("c", map[string]string{"zone": "2"})}
	cordoned := node("d", map[string]string{"zone": "3"})
	cordoned.Spec.Unschedulable = true
	nodes = append(nodes, cordoned)
	all := []storagev1.CSINode{csiNode("a", "drv"), csiNode("b", "drv"), csiNode("c", "drv", "other"), csiNode("d", "drv")}
	cases := map[string]struct {
		pv       *corev1.PersistentVolume
		driver   string
		csiNodes []storagev1.CSINode
		prefer   []string
		want     []string // any of
		err      string
	}{
		"the PV's affinity decides":               {pv: pinned("1"), driver: "drv", csiNodes: all, want: []string{"a"}},
		"affinity with two nodes, prefer one":     {pv: pinned("2"), driver: "drv", csiNodes: all, prefer: []string{"c"}, want: []string{"c"}},
		"a preference the affinity rules out":     {pv: pinned("1"), driver: "drv", csiNodes: all, prefer: []string{"b"}, want: []string{"a"}},
		"no affinity: any node with the driver":   {driver: "drv", csiNodes: all, want: []string{"a", "b", "c"}},
		"only nodes whose CSINode has the driver": {driver: "other", csiNodes: all, want: []string{"c"}},
		"a cordoned node is not chosen":           {pv: pinned("3"), driver: "drv", csiNodes: all, err: "matches the volume's node affinity"},
		"no node runs the driver":                 {driver: "missing", csiNodes: all, err: "no node runs the CSI driver missing"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := Place(tc.pv, tc.driver, "ns/claim", nodes, tc.csiNodes, tc.prefer...)
			if tc.err != "" {
				require.ErrorIs(t, err, ErrNoNode)
				assert.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Contains(t, tc.want, got)
			again, _ := Place(tc.pv, tc.driver, "ns/claim", nodes, tc.csiNodes, tc.prefer...)
			assert.Equal(t, got, again, "the same volume lands on the same node")
		})
	}
}

func TestRunAs(t *testing.T) {
	id := func(n int64) *int64 { return &n }
	assert.Nil(t, RunAs(nil))
	assert.Nil(t, RunAs(&corev1.PodSecurityContext{FSGroup: id(5)}), "no user: the agent's default")
	assert.Equal(t, &agentv1alpha1.RunAs{UID: 1000, GID: 1000}, RunAs(&corev1.PodSecurityContext{RunAsUser: id(1000)}))
	assert.Equal(t, &agentv1alpha1.RunAs{UID: 1000, GID: 2000}, RunAs(&corev1.PodSecurityContext{RunAsUser: id(1000), FSGroup: id(2000)}))
	assert.Equal(t, &agentv1alpha1.RunAs{UID: 1000, GID: 3000}, RunAs(&corev1.PodSecurityContext{RunAsUser: id(1000), RunAsGroup: id(3000), FSGroup: id(2000)}))
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
