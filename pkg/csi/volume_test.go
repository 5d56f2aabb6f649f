package csi

import (
	"testing"

	csispec "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	corev1 "k8s.io/api/core/v1"
)

// TestCapability needs no root: the access mode a Volume asks the plugin
// for is the one kubelet would ask for (its csi_client.go tables), with
// and without the plugin's SINGLE_NODE_MULTI_WRITER capability, read-only
// or not; and the access type.
func TestCapability(t *testing.T) {
	const (
		snw  = csispec.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
		snmw = csispec.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER
		snsw = csispec.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
		mnro = csispec.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
		mnmw = csispec.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
	)
	for _, tc := range []struct {
		modes           []corev1.PersistentVolumeAccessMode
		plain, snmwCaps csispec.VolumeCapability_AccessMode_Mode
	}{
		{nil, snw, snmw},
		{[]corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, snw, snmw},
		{[]corev1.PersistentVolumeAccessMode{corev1.ReadWriteOncePod}, snw, snsw},
		{[]corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany}, mnro, mnro},
		{[]corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany}, mnmw, mnmw},
		// Only the first mode counts, as in kubelet: an RWO volume that also
		// lists RWX is not published multi-node.
		{[]corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce, corev1.ReadWriteMany}, snw, snmw},
		{[]corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany, corev1.ReadWriteOnce}, mnmw, mnmw},
	} {
		for _, ro := range []bool{false, true} {
			v := Volume{AccessModes: tc.modes, ReadOnly: ro}
			assert.Equal(t, tc.plain, v.capability(nodeCaps{}).GetAccessMode().GetMode(), "%v read-only %v", tc.modes, ro)
			assert.Equal(t, tc.snmwCaps, v.capability(nodeCaps{singleNodeMultiWriter: true}).GetAccessMode().GetMode(), "%v read-only %v, SINGLE_NODE_MULTI_WRITER", tc.modes, ro)
		}
	}
	c := Volume{FSType: "xfs", MountOptions: []string{"noatime"}}.capability(nodeCaps{})
	assert.Equal(t, "xfs", c.GetMount().GetFsType())
	assert.Equal(t, []string{"noatime"}, c.GetMount().GetMountFlags())
	assert.NotNil(t, Volume{Block: true}.capability(nodeCaps{}).GetBlock())
}

// TestRecordMatches: any change in how a volume is asked for means taking
// it down and publishing it again; secrets and the publish context alone
// do not.
func TestRecordMatches(t *testing.T) {
	v := Volume{Driver: "d", Handle: "h", Attachment: "uid-1", StageSecrets: map[string]string{"k": "v"}}
	r := record{Driver: "d", Handle: "h", Attachment: "uid-1", Staged: true}
	assert.True(t, r.matches(v))
	for name, changed := range map[string]Volume{
		"read-only":  {Driver: "d", Handle: "h", Attachment: "uid-1", ReadOnly: true},
		"attachment": {Driver: "d", Handle: "h", Attachment: "uid-2"},
		"handle":     {Driver: "d", Handle: "other", Attachment: "uid-1"},
		"reuse":      {Driver: "d", Handle: "h", Attachment: "uid-1", Reuse: "/kubelet/pods/x"},
		"block":      {Driver: "d", Handle: "h", Attachment: "uid-1", Block: true},
	} {
		assert.False(t, r.matches(changed), name)
	}
	assert.Error(t, checkName("../etc"))
	assert.Error(t, checkName("a/b"))
	assert.NoError(t, checkName("pvc-0f1e2d3c"))
}
