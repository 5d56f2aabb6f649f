package stream

import (
	"context"
	"fmt"
	"io"

	"golang.org/x/time/rate"
)

// NewLimiter is a bandwidth limiter of bytesPerSecond (0: none, nil). Its
// burst is an eighth of a second's worth, at least 16 KiB and at most one
// copy buffer: a transfer never runs ahead of its rate by more than that.
func NewLimiter(bytesPerSecond int64) *rate.Limiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	burst := min(max(bytesPerSecond/8, 16<<10), bufSize)
	return rate.NewLimiter(rate.Limit(bytesPerSecond), int(burst))
}

// Paced writes to w no faster than every limiter allows (nil ones are
// none): one per transfer, one shared by all of a node's. A write waits
// for its bytes' tokens in pieces no larger than the smallest burst, and
// gives up when ctx ends.
func Paced(ctx context.Context, w io.Writer, limiters ...*rate.Limiter) io.Writer {
	var active []*rate.Limiter
	for _, l := range limiters {
		if l != nil {
			active = append(active, l)
		}
	}
	if len(active) == 0 {
		return w
	}
	piece := bufSize
	for _, l := range active {
		piece = min(piece, l.Burst())
	}
	return &paced{ctx: ctx, w: w, limiters: active, piece: piece}
}

// paced is Paced's writer.
type paced struct {
	ctx      context.Context
	w        io.Writer
	limiters []*rate.Limiter
	piece    int
}

func (p *paced) Write(b []byte) (int, error) {
	written := 0
	for len(b) > 0 {
		n := min(len(b), p.piece)
		for _, l := range p.limiters {
			if err := l.WaitN(p.ctx, n); err != nil {
				return written, fmt.Errorf("bandwidth limit: %w", err)
			}
		}
		m, err := p.w.Write(b[:n])
		written += m
		if err != nil {
			return written, err
		}
		b = b[n:]
	}
	return written, nil
}
