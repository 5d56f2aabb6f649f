// Package reexec lets a program run parts of itself as helper processes: a
// process that must be set up before it runs another binary (entering new
// namespaces, passing file descriptors) is the same executable started again
// under a registered name.
//
// A program that uses such helpers calls Init first thing in main, and its
// tests call it first thing in TestMain, so that the re-executed copy runs the
// helper instead of the program.
package reexec

import (
	"fmt"
	"os"
	"sync"
)

var (
	mu       sync.Mutex
	handlers = map[string]func(){}
	binary   string
)

// Register makes name a helper entry point. Packages call it from init; a
// second registration of a name panics, as it is a programming error.
func Register(name string, fn func()) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := handlers[name]; dup {
		panic(fmt.Sprintf("reexec: %s registered twice", name))
	}
	handlers[name] = fn
}

// Init runs the helper named by os.Args[0], if any, and exits with status 1
// should it return (helpers exec or exit by themselves). A helper started by
// another program that runs a command line (rsync's -e) cannot set argv[0];
// it is named by os.Args[1] instead and sees its own arguments from
// os.Args[2]. In a normal start Init returns at once.
func Init() {
	mu.Lock()
	fn, ok := handlers[os.Args[0]]
	if !ok && len(os.Args) > 1 {
		if fn, ok = handlers[os.Args[1]]; ok {
			os.Args = os.Args[1:]
		}
	}
	mu.Unlock()
	if !ok {
		return
	}
	fn()
	os.Exit(1)
}

// Self is the path that starts this executable again, even if its file was
// replaced since it started.
const Self = "/proc/self/exe"

// UseBinary makes helpers start from path, a small program that registers
// the same helpers and calls Init (cmd/ferry-helper), instead of from this
// executable. A program with heavy package initialisation pays it again in
// every helper: the node agent's client-go and controller-runtime cost about
// 0.1 s of CPU per start, two starts per sync.
func UseBinary(path string) {
	mu.Lock()
	defer mu.Unlock()
	binary = path
}

// Path is what starts a helper: the binary given to UseBinary, or Self.
func Path() string {
	mu.Lock()
	defer mu.Unlock()
	if binary != "" {
		return binary
	}
	return Self
}
