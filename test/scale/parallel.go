package scale

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/stretchr/testify/require"
)

// Parallel runs f(0) to f(n-1) on eight goroutines (making a level's
// thousands of objects one at a time would take most of a run) and
// returns their errors joined.
func Parallel(n int, f func(i int) error) error {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	next := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return errors.Join(errs...)
}

// Levels reads the levels of a run, N values separated by commas, from the
// environment variable name (def when unset).
func Levels(t require.TestingT, name, def string) []int {
	spec := os.Getenv(name)
	if spec == "" {
		spec = def
	}
	var out []int
	for _, f := range strings.Split(spec, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		require.NoError(t, err, "%s %q", name, spec)
		out = append(out, n)
	}
	return out
}
