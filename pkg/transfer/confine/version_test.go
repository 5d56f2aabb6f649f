package confine

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseRsyncVersion(t *testing.T) {
	for out, want := range map[string][3]int{
		"rsync  version 3.5.0  protocol version 32\nCopyright": {3, 5, 0},
		"rsync  version v3.2.7  protocol version 31\n":         {3, 2, 7},
		"rsync  version 3.10.1  protocol version 32":           {3, 10, 1},
	} {
		got, err := ParseRsyncVersion(out)
		require.NoError(t, err, out)
		assert.Equal(t, want, got, out)
	}
	_, err := ParseRsyncVersion("openrsync: protocol version 29")
	assert.ErrorContains(t, err, "not rsync's --version output")
}

// TestCheckRsyncRefusesOld runs stand-ins that report old and new versions.
func TestCheckRsyncRefusesOld(t *testing.T) {
	stand := func(version string) string {
		p := filepath.Join(t.TempDir(), "rsync")
		require.NoError(t, os.WriteFile(p, []byte("#!/bin/sh\necho 'rsync  version "+version+"  protocol version 31'\n"), 0o755))
		return p
	}
	err := CheckRsync(stand("3.2.7"))
	assert.ErrorContains(t, err, "is rsync 3.2.7, older than 3.5.0")
	assert.ErrorContains(t, err, "install rsync 3.5.0 or later")
	assert.NoError(t, CheckRsync(stand("3.5.0")))
	assert.NoError(t, CheckRsync(stand("3.10.0")))
	assert.NoError(t, CheckRsync(stand("4.0.0")))
}
