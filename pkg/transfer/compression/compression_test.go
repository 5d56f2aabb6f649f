package compression

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]struct {
		c    Compression
		args []string
		err  string
	}{
		"":        {c: Default, args: []string{"-z", "--compress-choice=zstd", "--compress-level=3"}},
		"none":    {c: None},
		"zstd":    {c: Compression{Choice: "zstd"}, args: []string{"-z", "--compress-choice=zstd"}},
		"zstd:-5": {c: Compression{Choice: "zstd", Level: -5}, args: []string{"-z", "--compress-choice=zstd", "--compress-level=-5"}},
		"zlib:6":  {c: Compression{Choice: "zlib", Level: 6}, args: []string{"-z", "--compress-choice=zlib", "--compress-level=6"}},
		"lz4":     {c: Compression{Choice: "lz4"}, args: []string{"-z", "--compress-choice=lz4"}},
		"lz4:3":   {err: `"lz4:3": lz4 takes no level`},
		"zlib:10": {err: "zlib's level is a number from 1 to 9"},
		"zstd:0":  {err: "zstd's level is a number from -131072 to 22"},
		"zstd:x":  {err: "zstd's level"},
		"gzip":    {err: "want zstd, lz4, zlib or none"},
	} {
		t.Run(in, func(t *testing.T) {
			c, err := Parse(in)
			if want.err != "" {
				assert.ErrorContains(t, err, want.err)
				assert.True(t, errors.Is(err, ErrInvalid))
				return
			}
			assert.NoError(t, err)
			assert.Equal(t, want.c, c)
			assert.Equal(t, want.args, c.Args())
			back, err := Parse(c.String())
			assert.NoError(t, err)
			assert.Equal(t, c, back, "String is what Parse reads")
		})
	}
}
