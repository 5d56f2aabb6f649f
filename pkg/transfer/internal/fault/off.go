//go:build !ferryfault

package fault

// At is where a step may fail; without the ferryfault tag it never does.
func At(Point) error { return nil }

// Started is where a started process is announced; without the ferryfault
// tag no one listens.
func Started(Point, int) {}
