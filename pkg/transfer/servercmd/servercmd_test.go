package servercmd

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseAccepts(t *testing.T) {
	cases := []struct {
		line string
		want []string // rsync argv after the binary
	}{
		// exactly what VolSync's source (stock rsync 3.x) sends
		{`rsync --server -lHogDtpArxSze.iLsfxCIvu --log-format=%i --delete --info=MISC2,STATS2 . .`,
			[]string{"--server", "-lHogDtpArxSze.iLsfxCIvu", "--log-format=%i", "--delete", "--info=MISC2,STATS2", "--", ".", "."}},
		// plain rsync -a to an absolute path with an escaped space
		{`rsync --server -logDtpre.iLsfxCIvu . /some/pa\ th`,
			[]string{"--server", "-logDtpre.iLsfxCIvu", "--", ".", "some/pa th"}},
		{`rsync --server -lHogDtpArxSe.iLsfxCIvu --compress-choice=zstd --delete . x/`,
			[]string{"--server", "-lHogDtpArxSe.iLsfxCIvu", "--compress-choice=zstd", "--delete", "--", ".", "x/"}},
		{`rsync --server -B4096 --partial-dir .p --temp-dir=/tmp . /`,
			[]string{"--server", "-B4096", "--partial-dir=.p", "--temp-dir=tmp", "--", ".", "."}},
		// Ferry's source: mtimes compared to the nanosecond
		{`rsync --server -logDtpAXrxSHe.iLsfxCIvu --numeric-ids -@-1 --delete . .`,
			[]string{"--server", "-logDtpAXrxSHe.iLsfxCIvu", "--numeric-ids", "-@-1", "--delete", "--", ".", "."}},
		{`rsync --server -r --files-from=- --from0 .`,
			[]string{"--server", "-r", "--files-from=-", "--from0", "--", ".", "."}},
		{`rsync --server -r --max-alloc=512M . .`,
			[]string{"--server", "-r", "--max-alloc=512M", "--", ".", "."}},
	}
	for _, tc := range cases {
		req, err := Parse(tc.line)
		require.NoError(t, err, tc.line)
		r, ok := req.(*Rsync)
		require.True(t, ok, tc.line)
		assert.Equal(t, tc.want, r.Args(), tc.line)
	}
}

func TestParseShutdown(t *testing.T) {
	req, err := Parse("shutdown 0")
	require.NoError(t, err)
	assert.Equal(t, Shutdown{Code: 0}, req)
	req, err = Parse("shutdown 23")
	require.NoError(t, err)
	assert.Equal(t, Shutdown{Code: 23}, req)
}

func TestParseRefuses(t *testing.T) {
	cases := map[string]string{
		"":              "empty command",
		"sh -c id":      `command "sh" not allowed`,
		"bash":          `command "bash" not allowed`,
		"true":          `command "true" not allowed`,
		"shutdown":      "usage: shutdown N",
		"shutdown x":    "exit code from 0 to 255",
		"shutdown 256":  "exit code from 0 to 255",
		"rsync -av . x": "--server must be the first argument",
		"rsync --server --sender -logDtpre.iLsfxCIvu . /etc":       "--sender is not allowed: this endpoint only receives",
		"rsync --server -logDtpre.iLsfxCIvu . ../x":                "do not use ..",
		"rsync --server -logDtpre.iLsfxCIvu . a/../../x":           "do not use ..",
		"rsync --server -logDtpre.iLsfxCIvu --log-file=/etc/x . .": "--log-file is not allowed: it writes a file outside the volume",
		"rsync --server -r --temp-dir=../../tmp . .":               "option --temp-dir: path \"../../tmp\": do not use ..",
		"rsync --server -r --partial-dir ../p . .":                 "option --partial-dir",
		"rsync --server -r --backup-dir=/../x . .":                 "do not use ..",
		"rsync --server -r --files-from=/etc/shadow . .":           "--files-from=/etc/shadow is not allowed",
		"rsync --server -r --remove-source-files . .":              "--remove-source-files is not allowed",
		"rsync --server -r --write-batch=/tmp/b . .":               "--write-batch is not allowed",
		"rsync --server -r --only-write-batch=/tmp/b . .":          "--only-write-batch is not allowed",
		"rsync --server -logDtpKre.iLsfxCIvu . .":                  "-K (--keep-dirlinks) is not allowed",
		"rsync --server -rLe.iLsfxCIvu . .":                        "-L (--copy-links) is not allowed",
		"rsync --server -se.iLsfxCIvu . .":                         "-s (--secluded-args) is not allowed",
		"rsync --server -r --rsync-path=/bin/sh . .":               "--rsync-path is not allowed",
		"rsync --server -r --daemon . .":                           "--daemon is not allowed",
		"rsync --server -r --delete=yes . .":                       "--delete takes no argument",
		"rsync --server -r --timeout":                              "--timeout needs an argument",
		"rsync --server -r -X/y . .":                               `option "-X/y" is not allowed`,
		"rsync --server -r":                                        `no "." argument`,
		"rsync --server -r . x\\":                                  "ends in a backslash",
		"rsync --server -r . a\nb":                                 "control character",
		"rsync --server -r --debug=ALL . .":                        "--debug is not allowed",
		"rsync --server -r --max-alloc=0 . .":                      "--max-alloc=0 is not allowed",
		"rsync --server -r --max-alloc=8G . .":                     "--max-alloc=8G is not allowed",
		"rsync --server -r --max-alloc=lots . .":                   "--max-alloc=lots is not allowed",
		"rsync --server -r - . .":                                  `bare "-" argument`,
		"rsync --server -r . -":                                    `bare "-" argument`,
	}
	for line, want := range cases {
		_, err := Parse(line)
		require.Error(t, err, line)
		assert.True(t, IsRefused(err), line)
		assert.Contains(t, err.Error(), want, line)
	}
}

func TestNoSpace(t *testing.T) {
	for _, tc := range []struct {
		stderr string
		want   bool
	}{
		{`rsync: [receiver] write failed on "/big-1": No space left on device (28)`, true},
		{`rsync: [receiver] write failed on "/big-1": Disk quota exceeded (122)`, true},
		{`rsync: connection unexpectedly closed (0 bytes received so far) [sender]`, false},
		{"", false},
	} {
		assert.Equal(t, tc.want, NoSpace(tc.stderr), tc.stderr)
	}
}
