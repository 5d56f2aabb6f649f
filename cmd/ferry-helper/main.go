// Command ferry-helper runs the node agent's helper processes (rsync's
// remote shell hand-over, rsync's confinement) from a binary that starts in
// milliseconds: it links only those helpers, not the agent's Kubernetes
// libraries, whose initialisation would otherwise run again in every helper.
// The agent uses it when it lies beside the agent's own executable.
package main

import (
	"fmt"
	"os"

	"github.com/ferrysync/ferry/pkg/transfer/reexec"

	// The helpers: they register with reexec when linked in.
	_ "github.com/ferrysync/ferry/pkg/transfer/confine"
	_ "github.com/ferrysync/ferry/pkg/transfer/rsh"
)

func main() {
	reexec.Init()
	fmt.Fprintln(os.Stderr, "ferry-helper: started by the node agent only; nothing to do")
	os.Exit(2)
}
