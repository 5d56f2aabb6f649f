package csi

import (
	"testing"

	csispec "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
)

// TestCapability needs no root: the access mode and type a Volume asks the
// plugin for.
func TestCapability(t *testing.T) {
	for _, tc := range []struct {
		v    Volume
		mode csispec.VolumeCapability_AccessMode_Mode
	}{
		{Volume{}, csispec.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		{Volume{ReadOnly: true}, csispec.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		{Volume{MultiNode: true}, csispec.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER},
		{Volume{MultiNode: true, ReadOnly: true}, csispec.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY},
	} {
		assert.Equal(t, tc.mode, tc.v.capability().GetAccessMode().GetMode(), "%+v", tc.v)
	}
	c := Volume{FSType: "xfs", MountOptions: []string{"noatime"}}.capability()
	assert.Equal(t, "xfs", c.GetMount().GetFsType())
	assert.Equal(t, []string{"noatime"}, c.GetMount().GetMountFlags())
	assert.NotNil(t, Volume{Block: true}.capability().GetBlock())
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
