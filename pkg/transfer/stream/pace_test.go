package stream

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPaced(t *testing.T) {
	var out bytes.Buffer
	assert.Same(t, &out, Paced(context.Background(), &out, nil, NewLimiter(0)), "no limit: the writer itself")

	data := bytes.Repeat([]byte("0123456789"), 10_000)
	fast := NewLimiter(1 << 30)
	assert.Equal(t, bufSize, fast.Burst(), "the burst is capped at a copy buffer")
	assert.Equal(t, 16<<10, NewLimiter(1024).Burst(), "and at least 16 KiB")
	assert.Equal(t, 1<<20/8, NewLimiter(1<<20).Burst(), "else an eighth of a second")
	w := Paced(context.Background(), &out, fast, NewLimiter(1<<29))
	n, err := w.Write(data)
	require.NoError(t, err)
	assert.Equal(t, len(data), n)
	assert.Equal(t, data, out.Bytes(), "every byte, in order, in pieces")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out.Reset()
	n, err = Paced(ctx, &out, NewLimiter(1024)).Write(data)
	assert.ErrorContains(t, err, "bandwidth limit")
	assert.Zero(t, n, "a cancelled wait writes nothing more")
}
