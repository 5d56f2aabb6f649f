package endpoint

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"

	"github.com/go-logr/logr"
	"golang.org/x/crypto/ssh"

	"github.com/ferrysync/ferry/pkg/transfer/cgroup"
	"github.com/ferrysync/ferry/pkg/transfer/confine"
	"github.com/ferrysync/ferry/pkg/transfer/internal/exitcode"
	"github.com/ferrysync/ferry/pkg/transfer/internal/fault"
	"github.com/ferrysync/ferry/pkg/transfer/servercmd"
	"github.com/ferrysync/ferry/pkg/transfer/stream"
)

// exec runs one exec request and returns its exit status.
func (s *Server) exec(l *listener, log logr.Logger, ch ssh.Channel, command string) int {
	req, err := servercmd.Parse(command)
	if err != nil {
		log.Info("refused request", "reason", err.Error())
		return refused(l, ch, err.Error())
	}
	switch r := req.(type) {
	case servercmd.Shutdown:
		log.Info("sync ended by source", "result", r.Code)
		code, why := s.shutdown(l, log, r.Code)
		if err := fault.At(fault.ShutdownReply); err != nil {
			_ = ch.Close() // the reply is lost on the way
			return code
		}
		if code != 0 && r.Code == 0 {
			// The source must not count a sync the destination does not.
			fmt.Fprintf(ch.Stderr(), "ferry: %s\n", why)
			return code
		}
		return 0
	case *servercmd.Rsync:
		if !l.dest.InPlace && slices.Contains(r.Options, "--inplace") {
			return refused(l, ch, "refused: option --inplace is not allowed: this destination's replica is its image (copyMethod Direct), which must never hold a half-updated file")
		}
		if l.held.Load() {
			return refused(l, ch, heldMessage)
		}
		if err := fault.At(fault.ReceiverAdmit); err != nil {
			return refused(l, ch, err.Error())
		}
		// A receiver still running belongs to a try whose source rsync is
		// gone (a source starts a try only once the last one ended): it
		// must not write beside, or after, this one.
		if n := l.endRunning(shutdownGrace); n > 0 {
			log.Info("ended transfers of an earlier try still running", "count", n)
		}
		t, cause := l.admit(s.limits.TransfersPerDestination) // the hold again, now as one step with registering
		switch cause {
		case refusedHeld:
			return refused(l, ch, heldMessage)
		case RefusedDestinationTransfers:
			s.refuse(cause)
			return refused(l, ch, fmt.Sprintf("this destination runs its maximum of %d transfers; try again shortly",
				s.limits.TransfersPerDestination))
		}
		defer l.release(t)
		l.record.forget()
		return s.runRsync(l, log, ch, r, t)
	}
	return 1
}

// heldMessage is why a held destination refuses a transfer.
const heldMessage = "the destination is held until the snapshot of its last sync is cut; try again shortly"

// incomplete is the result the destination reports for a sync it does not
// count complete, whatever its source said.
const incomplete = 1

// shutdown ends the current sync with the source's result code and reports
// it (SyncEnded); it returns the result the destination counts, and why
// that is not the source's. Transfers still running are waited for a moment (one
// whose client has just finished may still be exiting) and then ended, so
// that nothing writes once a sync is over and every receiver's result is
// known. With HoldOnShutdown a success holds the destination first, and a
// sync that turns out incomplete lets go of the hold it took (never of one
// the agent set).
func (s *Server) shutdown(l *listener, log logr.Logger, code int) (int, string) {
	e := Event{Kind: SyncEnded, ExitCode: code, Needed: l.record.takeNeeded()}
	took := l.dest.HoldOnShutdown && code == 0 && !l.held.Swap(true)
	if n := l.endRunning(shutdownGrace); n > 0 {
		e.Message = fmt.Sprintf("%d transfer(s) still wrote when the source ended the sync; they were stopped and the sync is incomplete", n)
		log.Info("ended transfers still running at shutdown", "count", n)
		e.ExitCode = max(e.ExitCode, incomplete)
	}
	var why string
	e.ExitCode, why = s.ended(l, log, e.ExitCode)
	if e.Message == "" {
		e.Message = why
	}
	if e.ExitCode != 0 && took {
		l.held.Store(false)
	}
	emit(l, e)
	return e.ExitCode, e.Message
}

// refused tells the client, and the destination's events, why a request
// was turned away, and returns the request's exit status.
func refused(l *listener, ch ssh.Channel, msg string) int {
	fmt.Fprintf(ch.Stderr(), "ferry: %s\n", msg)
	emit(l, Event{Kind: Refused, Message: msg})
	return 1
}

// runRsync runs a confined rsync receiver wired to the channel, as
// transfer t.
func (s *Server) runRsync(l *listener, log logr.Logger, ch ssh.Channel, r *servercmd.Rsync, t *transfer) int {
	spec := confine.Spec{
		Volume: l.dest.Volume, Dir: l.dest.Dir, Privileged: l.dest.Privileged,
		Scratch: s.scratch, Rsync: s.rsync,
	}
	if !l.dest.Privileged {
		// Without the privileged-movers permission rsync runs as an ordinary
		// user: every file it writes is that user's, and no device is made.
		// --no-super says so to rsync, while the client's -o, -g and -D keep
		// framing the file list (turning those off on one side only would
		// desync it). --chmod=ug-s drops setuid and setgid bits: a setuid
		// file of that user is a way into whoever runs it.
		r.Options = append(r.Options, "--no-super", "--chmod=ug-s")
		runAs := DefaultRunAs
		if l.dest.RunAs != nil {
			runAs = *l.dest.RunAs
		}
		spec.RunAs = &runAs
	}
	if s.limits.IdleTimeout > 0 {
		// After the client's own: rsync takes the last.
		r.Options = append(r.Options, fmt.Sprintf("--timeout=%d", max(1, int(s.limits.IdleTimeout.Seconds()))))
	}
	spec.Args = r.Args()
	select {
	case s.transfers <- struct{}{}:
		defer func() { <-s.transfers }()
	default:
		s.refuse(RefusedTransfers)
		return refused(l, ch, fmt.Sprintf("the node runs its maximum of %d transfers; try again shortly", s.limits.Transfers))
	}
	in := &countingReader{r: ch}
	out := &countingWriter{w: ch}
	rcv, err := s.startReceiver(l, t, spec, out, ch.Stderr())
	if errors.Is(err, errStopped) {
		return refused(l, ch, err.Error())
	}
	if err != nil {
		fmt.Fprintf(ch.Stderr(), "ferry: cannot start rsync: %v\n", err)
		log.Error(err, "cannot start rsync")
		return 1
	}
	defer rcv.removeGroup()
	cmd, group, stdin := rcv.cmd, rcv.group, rcv.stdin
	emit(l, Event{Kind: RsyncStarted})
	// Not waited for: it ends when the channel closes after rsync exits.
	go func() {
		_, _ = stream.Copy(stdin, in)
		_ = stdin.Close()
	}()
	// A removed destination (l.ctx) kills its transfers. The transfer is
	// released (by exec) only once RsyncEnded is queued, so a shutdown that
	// waits for it reports the sync after the transfer.
	err = cmd.Wait()
	code := exitcode.Of(err)
	l.record.received(code == 0)
	ended := Event{Kind: RsyncEnded, ExitCode: code, BytesReceived: in.n.Load(), BytesSent: out.n.Load()}
	if group != nil && group.OOMKilled() {
		ended.Message, ended.OOMKilled = cgroup.OOMMessage, true
		fmt.Fprintf(ch.Stderr(), "ferry: %s\n", ended.Message)
	}
	log.Info("rsync ended", "exitCode", code, "bytesReceived", ended.BytesReceived, "bytesSent", ended.BytesSent, "message", ended.Message)
	emit(l, ended)
	return code
}

// receiver is a started receiving rsync: its process, its cgroup (nil:
// none) and the write end of its standard input.
type receiver struct {
	cmd   *exec.Cmd
	group *cgroup.Group
	stdin *os.File
}

// startReceiver starts a confined rsync as spec says, as transfer t (so
// not once t was stopped: errStopped), in a cgroup of its own when the
// server has a pool, writing to out and errs. On error nothing of it is
// left.
func (s *Server) startReceiver(l *listener, t *transfer, spec confine.Spec, out, errs io.Writer) (_ *receiver, err error) {
	r := &receiver{}
	defer func() {
		if err != nil {
			r.removeGroup()
		}
	}()
	if s.cgroups != nil {
		if err := fault.At(fault.ReceiverCgroup); err != nil {
			return nil, fmt.Errorf("make rsync's cgroup: %w", err)
		}
		if r.group, err = s.cgroups.Make("destination", l.dest.Limits); err != nil {
			return nil, err
		}
		spec.Cgroups = r.group.Dirs()
	}
	if err := fault.At(fault.ReceiverConfine); err != nil {
		return nil, fmt.Errorf("confine rsync: %w", err)
	}
	cmd, err := confine.Command(l.ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("confine rsync: %w", err)
	}
	// Our own pipe: exec's StdinPipe hides the *os.File that Grow needs.
	stdinR, stdin, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("rsync stdin: %w", err)
	}
	stream.Grow(stdin)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdinR, out, errs
	if err = fault.At(fault.ReceiverStart); err == nil {
		err = t.start(cmd)
	}
	_ = stdinR.Close() // rsync holds it now
	if err != nil {
		_ = stdin.Close()
		if errors.Is(err, errStopped) {
			return nil, err
		}
		return nil, fmt.Errorf("start rsync: %w", err)
	}
	fault.Started(fault.Receiver, cmd.Process.Pid)
	r.cmd, r.stdin = cmd, stdin
	return r, nil
}

// removeGroup removes the receiver's cgroup, if it has one.
func (r *receiver) removeGroup() {
	if r.group != nil {
		r.group.Remove()
	}
}
