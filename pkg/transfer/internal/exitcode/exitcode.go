// Package exitcode turns a finished process's error into the exit status
// rsync and ssh speak of: both ends of a transfer report it (the source in
// its result, the endpoint as the session's exit-status), so they must agree
// on what a killed process is.
package exitcode

import (
	"errors"
	"os/exec"
)

// Killed is the status of a process that died by a signal, as ssh reports
// a remote command that did.
const Killed = 255

// NotRun is the status of a try whose rsync never ran to an end of its
// own: the connection could not be made, or the try's set-up (its socket
// directory, cgroup, confinement, the exec itself) failed. It is 255 as
// ssh's is for a command it could not run. Never 0: a source tells the
// destination `shutdown 0` only after an rsync of the sync exited 0.
const NotRun = 255

// Of returns the exit status behind a Wait error: 0 for nil, the process's
// code, or Killed when it has none.
func Of(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() >= 0 {
		return ee.ExitCode()
	}
	return Killed
}
