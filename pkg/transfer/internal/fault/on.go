//go:build ferryfault

package fault

import (
	"fmt"
	"sync"
)

var (
	mu       sync.Mutex
	injector Injector
)

// Set installs the injector of a test (nil: none) and returns a function
// that removes it again.
func Set(i Injector) (restore func()) {
	mu.Lock()
	injector = i
	mu.Unlock()
	return func() { Set(nil) }
}

func current() Injector {
	mu.Lock()
	defer mu.Unlock()
	return injector
}

// At asks the injector whether the step at p fails.
func At(p Point) error {
	if i := current(); i != nil {
		if err := i.At(p); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return nil
}

// Started tells the injector of a process started at p.
func Started(p Point, pid int) {
	if i := current(); i != nil {
		i.Started(p, pid)
	}
}
