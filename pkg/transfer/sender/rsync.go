package sender

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"

	"golang.org/x/crypto/ssh"

	"github.com/ferrysync/ferry/pkg/transfer/cgroup"
	"github.com/ferrysync/ferry/pkg/transfer/confine"
	"github.com/ferrysync/ferry/pkg/transfer/internal/exitcode"
	"github.com/ferrysync/ferry/pkg/transfer/internal/fault"
	"github.com/ferrysync/ferry/pkg/transfer/rsh"
	"github.com/ferrysync/ferry/pkg/transfer/stream"
)

// remoteShell is what the sending rsync's remote shell needs: a socket
// directory (bound into the confinement) with the listener the helper
// connects back to, the helper's executable and its command line.
type remoteShell struct {
	dir, exe, command string
	ln                *rsh.Listener
}

// newRemoteShell makes a remoteShell; close removes it.
func newRemoteShell() (_ *remoteShell, err error) {
	if err := fault.At(fault.RshSocket); err != nil {
		return nil, fmt.Errorf("make rsh socket dir: %w", err)
	}
	sh := &remoteShell{}
	if sh.dir, err = os.MkdirTemp("", "ferry-rsh-"); err != nil {
		return nil, fmt.Errorf("make rsh socket dir: %w", err)
	}
	defer func() {
		if err != nil {
			sh.close()
		}
	}()
	if sh.ln, err = rsh.Listen(sh.dir); err != nil {
		return nil, err
	}
	if sh.exe, err = rsh.Executable(); err != nil {
		return nil, err
	}
	if sh.command, err = rsh.Command(rshBinary, rshDir+"/"+filepath.Base(sh.ln.Socket())); err != nil {
		return nil, err
	}
	return sh, nil
}

// close stops listening and removes the socket directory.
func (sh *remoteShell) close() {
	if sh.ln != nil {
		_ = sh.ln.Close()
	}
	_ = os.RemoveAll(sh.dir)
}

// runRsync starts the confined rsync, serves its remote shell over the
// ssh client while it runs and parses its output into res (stats, stderr
// with the receiver's words, exit code). werr is how rsync exited and
// remoteErr what the receiver said; err is a failure to start it.
func runRsync(ctx context.Context, o *Options, cmd *exec.Cmd, ln *rsh.Listener, client *ssh.Client, attempt int, res *Result) (werr error, remoteErr string, err error) {
	// A pipe of our own: exec's StdoutPipe may not be read after Wait starts,
	// and Wait must run concurrently so a dead rsync cancels the hand-over.
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, "", fmt.Errorf("rsync stdout: %w", err)
	}
	defer pr.Close()
	cmd.Stdout = pw
	var stderr bytes.Buffer
	cmd.Stderr = &limitedWriter{w: &stderr, left: 16 << 10}
	if err = fault.At(fault.SourceStart); err == nil {
		err = cmd.Start()
	}
	_ = pw.Close()
	if err != nil {
		return nil, "", fmt.Errorf("start rsync: %w", err)
	}
	fault.Started(fault.SourceRsync, cmd.Process.Pid)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	waited := make(chan error, 1)
	go func() {
		waited <- cmd.Wait()
		cancel() // the helper never connects if rsync dies first
	}()
	var remote sync.WaitGroup
	remote.Go(func() { remoteErr = serveRemote(ctx, ln, cmd.Process.Pid, client, o) })
	stats := parseOutput(pr, throttle(o, attempt))
	werr = <-waited
	remote.Wait()
	res.Stats, res.Errors = stats, stderr.String()+remoteErr
	res.ExitCode = exitcode.Of(werr)
	return werr, remoteErr, nil
}

// confined makes the confined rsync command, in a cgroup of its own when
// the options have a pool (the caller removes the group).
func confined(ctx context.Context, o *Options, spec confine.Spec) (*exec.Cmd, *cgroup.Group, error) {
	var group *cgroup.Group
	if o.Cgroups != nil {
		if err := fault.At(fault.SourceCgroup); err != nil {
			return nil, nil, fmt.Errorf("make rsync's cgroup: %w", err)
		}
		var err error
		if group, err = o.Cgroups.Make("source", o.Limits); err != nil {
			return nil, nil, err
		}
		spec.Cgroups = group.Dirs()
	}
	cmd, err := confine.Command(ctx, spec)
	if ferr := fault.At(fault.SourceConfine); ferr != nil {
		err = ferr
	}
	if err != nil {
		if group != nil {
			group.Remove()
		}
		return nil, nil, fmt.Errorf("confine rsync: %w", err)
	}
	return cmd, group, nil
}

// serveRemote waits for rsync's remote shell and runs its command on a new
// session of the connection, what rsync sends paced at the options'
// bandwidth limits; it returns what the remote side wrote to its standard
// error (bounded), where a receiver's failure is told.
func serveRemote(ctx context.Context, ln *rsh.Listener, rsync int, client *ssh.Client, o *Options) string {
	log := o.Log
	req, err := ln.Accept(ctx, rsync)
	if err != nil {
		return ""
	}
	status := 255
	defer func() { req.Close(status) }()
	sess, err := client.NewSession()
	if err != nil {
		log.Info("open ssh session", "error", err.Error())
		return ""
	}
	defer sess.Close()
	stdin, err := sess.StdinPipe()
	if err != nil {
		return ""
	}
	sess.Stdout = req.Out
	var remoteErr bytes.Buffer
	sess.Stderr = &limitedWriter{w: &remoteErr, left: 16 << 10}
	if err := sess.Start(req.Command); err != nil {
		log.Info("start remote rsync", "error", err.Error())
		return ""
	}
	// Not waited for: rsync closes its end only after the helper exits.
	go func() {
		_, _ = stream.Copy(stream.Paced(ctx, stdin, o.limiter, o.NodeBandwidth), req.In)
		_ = stdin.Close()
	}()
	stop := context.AfterFunc(ctx, func() { _ = sess.Close() })
	defer stop()
	err = sess.Wait()
	req.CloseWrite()
	status = exitcode.Of(err)
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		status = ee.ExitStatus()
	}
	if remoteErr.Len() > 0 {
		log.Info("destination said", "stderr", remoteErr.String())
	}
	return remoteErr.String()
}
