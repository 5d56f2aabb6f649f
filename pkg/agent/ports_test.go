package agent

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPortRange(t *testing.T) {
	for in, want := range map[string]PortRange{"": {}, "0": {}, "30500-30502": {Min: 30500, Max: 30502}, "22-22": {Min: 22, Max: 22}} {
		got, err := ParsePortRange(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, bad := range []string{"30500", "30502-30500", "0-10", "1-70000", "a-b"} {
		_, err := ParsePortRange(bad)
		assert.ErrorContains(t, err, "want MIN-MAX", bad)
	}
	r := PortRange{Min: 30500, Max: 30502}
	assert.Equal(t, []int32{30500, 30501, 30502}, r.Candidates(0))
	assert.Equal(t, []int32{30501, 30500, 30502}, r.Candidates(30501), "the earlier port first")
	assert.Equal(t, []int32{30500, 30501, 30502}, r.Candidates(4000), "an earlier port outside the range is not used")
	assert.Equal(t, []int32{4000, 0}, PortRange{}.Candidates(4000))
	assert.Equal(t, []int32{0}, PortRange{}.Candidates(0))
}
