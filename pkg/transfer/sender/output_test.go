package sender

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestParseOutput(t *testing.T) {
	out := ">f+++++++++ a\r         32,768   0%    0.00kB/s    0:00:00 (xfr#1, to-chk=3/5)\r" +
		"        524,288  48%   10.00MB/s    0:00:01  \r" +
		"     1,081,344 100%   10.31MB/s    0:00:00 (xfr#2, to-chk=0/5)\n" +
		"*deleting   old\n\n" +
		"Number of files: 5 (reg: 3, dir: 2)\nNumber of created files: 4 (reg: 3, dir: 1)\n" +
		"Number of deleted files: 1 (reg: 1)\nNumber of regular files transferred: 3\n" +
		"Total file size: 1,081,344 bytes\nTotal bytes sent: 1,082,000\nTotal bytes received: 95\n\n" +
		"sent 1,082,000 bytes  received 95 bytes  2,164,190.00 bytes/sec\ntotal size is 1,081,344  speedup is 1.00\n"
	var seen [][2]int64
	st := parseOutput(strings.NewReader(out), func(b, f int64) { seen = append(seen, [2]int64{b, f}) })
	// The record in the middle of a file counts too, with the files done
	// so far.
	assert.Equal(t, [][2]int64{{32768, 1}, {524288, 1}, {1081344, 2}}, seen)
	assert.Equal(t, int64(3), st.FilesTransferred)
	assert.Equal(t, int64(1), st.FilesDeleted)
	assert.Equal(t, int64(1082000), st.BytesSent)
	assert.Equal(t, int64(95), st.BytesReceived)
	assert.True(t, strings.HasPrefix(st.Summary, "Number of files: 5"))
	assert.Contains(t, st.Summary, "speedup is 1.00")
	assert.NotContains(t, st.Summary, "deleting")
}
