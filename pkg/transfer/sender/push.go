// Package sender is the pushing side of Ferry's data plane: it sends a
// mounted, read-only point-in-time copy of a volume to a destination the way
// VolSync's rsync source does, so it works against Ferry's endpoint and
// against a stock VolSync destination alike.
//
// It runs the stock rsync 3.x client with VolSync's flags (-aAHSx --delete,
// stats; compression optional), confined as the
// destination's receiver is (package confine: the volume read-only at /data
// and nothing else of the node, no network), so that a tenant who swaps a
// directory for a symlink while it reads can only lead it to another place
// in the volume. It speaks over a Go ssh connection
// that authenticates with the "source" key and pins the destination's host
// key (destination.pub). rsync's remote shell is Ferry's rsh helper, so the
// bytes travel over the connection this package holds. A failed transfer is
// retried with exponential backoff (5 tries from 2 s, as VolSync); then the
// source tells the destination the sync is over with `shutdown N`, N being
// rsync's final exit status (VolSync's destination and Ferry's both end the
// sync on it; only 0 makes a new image). N is 0 only when an rsync of this
// sync ran to 0; a try that failed before its rsync could end says
// exitcode.NotRun. Ferry's destination replies non-zero when it does not
// count the sync complete, and the push then fails too.
//
// Between Ferry's own ends a sync sends only what it must (package
// treedigest): nothing when the destination holds the very tree, only the
// entries changed since the last completed sync when it confirms it still
// holds what that sync left (a Record), and changed files updated in place
// when its replica is not the image and has no hard links.
//
// # Engine choice
//
// The protocol engine is the stock rsync binary on both ends, for VolSync's
// fidelity. github.com/gokrazy/rsync (v0.2.5, the only recent version the
// module proxy serves) runs either end in-process over any stream, but it
// speaks only protocol 27. Checked against a stock rsync 3.5.0 client, as a
// receiver it refuses -H ("support for hard links not yet implemented"),
// breaks the connection on -A and on -z, truncates file mtimes to whole
// seconds, keeps no directory mtimes, and aborts the run when --delete meets
// a non-empty stale directory. As a sender it is reported (shared recipes)
// to ignore -H silently and not to forward --delete. No part of a
// VolSync-compatible transfer is complete in it, so Ferry does not use it.
package sender

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/ferrysync/ferry/pkg/transfer/cgroup"
	"github.com/ferrysync/ferry/pkg/transfer/confine"
	"github.com/ferrysync/ferry/pkg/transfer/internal/exitcode"
	"github.com/ferrysync/ferry/pkg/transfer/servercmd"
)

// IncrementalSummary starts the Summary of an incremental sync.
const IncrementalSummary = "incremental:"

// Where the confined rsync finds the remote-shell helper and its socket.
const (
	rshBinary = confine.BindDir + "/rsh"
	rshDir    = confine.BindDir + "/rsh.d"
)

// rsyncFlags are VolSync's, without -h (exact numbers in the stats) and
// --itemize-changes (a line per entry from the receiver that no one
// reads: a hundred thousand messages for as many new files), and with
// --numeric-ids (owners are kept by number, whatever names the nodes know).
var rsyncFlags = []string{"-aAHSx", "--numeric-ids", "--delete", "--info=stats2,misc2,progress2"}

// nanosecondTimes makes rsync's quick check compare mtimes to the
// nanosecond. By default it compares whole seconds, so a file rewritten
// with the same size within the second of its last synced version (an
// application writing just after a snapshot) would be left stale in the
// replica of a sync reported succeeded. Sent to Ferry's endpoint only: the
// rrsync of VolSync's destination refuses it.
const nanosecondTimes = "--modify-window=-1"

// ferryVersion is how Ferry's endpoint names itself in the ssh handshake.
const ferryVersion = "SSH-2.0-Ferry"

// Push sends the volume to the destination and says `shutdown N` when done.
// It returns an error when no try succeeded; the Result is filled either way.
func Push(ctx context.Context, o Options) (Result, error) {
	o.defaults()
	res := Result{Start: time.Now()}
	conn := &connection{opts: &o}
	defer conn.close()
	backoff := o.Backoff
	var err error
	var p plan
	if !o.Full {
		p = prepare(ctx, &o, conn)
	}
	if p.unchanged {
		res.Unchanged, res.Summary = true, "unchanged since the last sync: nothing to send"
		o.Attempts = 0
	}
	o.Record.set(nil) // until this sync has ended well
	for attempt := 1; attempt <= o.Attempts; attempt++ {
		res.Attempts = attempt
		if attempt > 1 && o.Progress != nil {
			o.Progress(Progress{Attempt: attempt}) // a retry shows before its first byte
		}
		err = pushOnce(ctx, &o, conn, attempt, &res, &p)
		if err == nil || ctx.Err() != nil {
			break
		}
		o.Log.Info("transfer failed", "attempt", attempt, "exitCode", res.ExitCode, "error", err.Error())
		if attempt == o.Attempts {
			break
		}
		if servercmd.NoSpace(res.Errors) {
			o.Log.Info("the destination's volume is full; a retry would fill it again")
			break
		}
		if p.list != nil {
			// The list may be what failed (a live volume's listed entry
			// gone since the walk): the next try walks the whole tree,
			// which is never wrong.
			p.list = nil
			o.Log.Info("the next try sends the whole tree")
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
		}
		backoff *= 2
	}
	res.Listed, res.InPlace = len(p.list), p.inPlace
	if res.Listed > 0 {
		res.Summary = fmt.Sprintf("%s %d changed entries since the last sync\n%s", IncrementalSummary, res.Listed, res.Summary)
	}
	if ctx.Err() == nil {
		if res.ExitCode != 0 && servercmd.NoSpace(res.Errors) {
			conn.noSpace(o.Volume, o.Log)
		}
		serr := conn.shutdown(res.ExitCode)
		if serr != nil {
			o.Log.Info("could not tell the destination the sync ended", "error", serr.Error())
			if err == nil {
				err = serr
			}
		}
		if err == nil && res.ExitCode == 0 {
			o.Record.set(p.tree)
		}
	}
	res.End = time.Now()
	if cerr := ctx.Err(); cerr != nil {
		if err == nil {
			err = cerr
		} else {
			err = fmt.Errorf("%w: %v", cerr, err)
		}
	}
	return res, err
}

// pushOnce runs one rsync try over the held connection, as p says: over
// the whole tree, or over the entries in its list (an incremental sync),
// updating files in place or not.
// Its ExitCode is NotRun until rsync itself ends: only an rsync that
// exits 0 makes a try, and so the sync's shutdown, succeed.
func pushOnce(ctx context.Context, o *Options, conn *connection, attempt int, res *Result, p *plan) error {
	res.ExitCode = exitcode.NotRun
	client, err := conn.get()
	if err != nil {
		return err
	}
	sh, err := newRemoteShell()
	if err != nil {
		return err
	}
	defer sh.close()
	args, err := rsyncArgs(o, client, p, sh.dir, sh.command)
	if err != nil {
		return err
	}
	spec := confine.Spec{Volume: o.Volume, ReadOnly: true, Scratch: o.Scratch, Rsync: o.Rsync, Args: args,
		Binds: []confine.Bind{{Host: sh.exe, Path: rshBinary}, {Host: sh.dir, Path: rshDir}}}
	cmd, group, err := confined(ctx, o, spec)
	if err != nil {
		return err
	}
	if group != nil {
		defer group.Remove()
	}
	werr, remoteErr, err := runRsync(ctx, o, cmd, sh.ln, client, attempt, res)
	if err != nil || werr == nil {
		return err
	}
	if group != nil && group.OOMKilled() {
		return fmt.Errorf("rsync exited with %d: %w", res.ExitCode, cgroup.ErrOOMKilled)
	}
	why := lastLine(res.Errors)
	if remoteErr != "" { // the receiver's own words come first: the cause
		why, _, _ = strings.Cut(strings.TrimSpace(remoteErr), "\n")
	}
	return fmt.Errorf("rsync exited with %d: %s", res.ExitCode, why)
}

// rsyncArgs are the sending rsync's arguments for the plan: VolSync's
// flags, the compression, nanosecond times with a Ferry peer, the list of
// changed entries (written into dir) for an incremental sync, --inplace
// where the destination allows it.
func rsyncArgs(o *Options, client *ssh.Client, p *plan, dir, rshCmd string) ([]string, error) {
	args := append(append([]string{}, rsyncFlags...), o.Compression.Args()...)
	if string(client.ServerVersion()) == ferryVersion {
		args = append(args, nanosecondTimes)
	}
	if p.list != nil {
		// Only the listed entries (their parents come with them), each
		// directory listed as "dir/." one level deep, so --delete removes
		// what it lost; --files-from turns -a's recursion off.
		if err := os.WriteFile(filepath.Join(dir, listFile), []byte(strings.Join(p.list, "\x00")+"\x00"), 0o600); err != nil {
			return nil, fmt.Errorf("write the list of changed entries: %w", err)
		}
		args = append(args, "--files-from="+rshDir+"/"+listFile, "--from0", "--dirs")
	}
	if p.inPlace {
		args = append(args, "--inplace")
	}
	return append(args, "-e", rshCmd, confine.DataDir+"/", o.User+"@ferry-destination:"+o.Path), nil
}

// throttle turns rsync's progress records into Progress calls at most every
// ProgressInterval.
func throttle(o *Options, attempt int) func(bytes, files int64) {
	if o.Progress == nil {
		return nil
	}
	var last time.Time
	return func(b, f int64) {
		if now := time.Now(); now.Sub(last) >= o.ProgressInterval {
			last = now
			o.Progress(Progress{Attempt: attempt, BytesDone: b, FilesDone: f})
		}
	}
}
