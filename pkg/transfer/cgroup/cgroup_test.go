package cgroup

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestOwnCgroups(t *testing.T) {
	for name, tc := range map[string]struct {
		file string
		want map[string]string
	}{
		"v1 with a v2 hierarchy beside": {
			file: "9:name=systemd:/\n8:pids:/pod/x\n4:memory:/pod/x\n2:cpu,cpuacct:/\n0::/\n",
			want: map[string]string{"name=systemd": "/", "pids": "/pod/x", "memory": "/pod/x", "cpu": "/", "cpuacct": "/", "": "/"},
		},
		"v2 only": {file: "0::/kubepods/burstable/pod1/ctr\n", want: map[string]string{"": "/kubepods/burstable/pod1/ctr"}},
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "cgroup")
			require.NoError(t, os.WriteFile(p, []byte(tc.file), 0o644))
			got, err := ownCgroups(p)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestSanitize(t *testing.T) {
	assert.Equal(t, "ns_rd", sanitize("ns/rd"))
	assert.Equal(t, "_a_b", sanitize(".a.b"))
}

func TestLowerNeverRaises(t *testing.T) {
	node := Limits{MemoryBytes: 2 << 30, Pids: 64}
	for name, tc := range map[string]struct{ cr, want Limits }{
		"none":                          {cr: Limits{}, want: node},
		"a lower memory limit":          {cr: Limits{MemoryBytes: 1 << 20}, want: Limits{MemoryBytes: 1 << 20, Pids: 64}},
		"a higher memory limit":         {cr: Limits{MemoryBytes: 8 << 30}, want: node},
		"a CPU limit, none on the node": {cr: Limits{CPUMillis: 500}, want: Limits{MemoryBytes: 2 << 30, Pids: 64, CPUMillis: 500}},
	} {
		assert.Equal(t, tc.want, node.Lower(tc.cr), name)
	}
	assert.Equal(t, Limits{MemoryBytes: 5}, Limits{}.Lower(Limits{MemoryBytes: 5}), "an unlimited node takes the CR's")
}
