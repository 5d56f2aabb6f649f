package cli

import (
	"context"
	"fmt"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/pkg/api/scheme"
)

// newClient is a client of Ferry's scheme (core kinds and VolSync's).
func newClient(cfg *rest.Config) (client.Client, error) {
	s, err := scheme.New()
	if err != nil {
		return nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return c, nil
}

// waitFor reads obj (key) every poll until done says it is there, or
// timeout passes; the error then says what was awaited.
func waitFor[T client.Object](ctx context.Context, c client.Client, key client.ObjectKey, obj T, poll, timeout time.Duration,
	what string, done func(T) bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		if err := c.Get(ctx, key, obj); err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if done(obj) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waited %v for %s: %w", timeout, what, ctx.Err())
		case <-tick.C:
		}
	}
}
