package sender

import (
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/time/rate"

	"github.com/ferrysync/ferry/pkg/transfer/cgroup"
	"github.com/ferrysync/ferry/pkg/transfer/compression"
	"github.com/ferrysync/ferry/pkg/transfer/keepalive"
	"github.com/ferrysync/ferry/pkg/transfer/sshkeys"
	"github.com/ferrysync/ferry/pkg/transfer/stream"
)

// Options say where to push what.
type Options struct {
	// Address and Port of the destination's ssh endpoint.
	Address string
	Port    int
	// User for the ssh connection (VolSync: root).
	User string
	// Path within the destination volume ("/" for a replica).
	Path string
	// Keys are the source's identity and the pinned destination host key.
	Keys *sshkeys.Source
	// Volume is the host path of the mounted source data.
	Volume string
	// Scratch is an empty directory the agent owns, where each try's
	// confinement mounts its private root (see confine.Spec).
	Scratch string
	// Cgroups, when set, gives each try's rsync a cgroup of its own (its
	// memory and pids limits), lowered by Limits (the CR's moverResources).
	Cgroups *cgroup.Pool
	Limits  cgroup.Limits
	// Compression is how rsync compresses what it sends (zero value:
	// compression.Default; compression.None sends data as it is).
	Compression compression.Compression
	// Full always runs rsync over the whole tree. Otherwise the source
	// first offers the digest of the volume's tree (treedigest) and sends
	// nothing when the destination says its last completed sync received
	// that very tree and nothing changed there since.
	Full bool
	// Record, when set, is what this source remembers of its last
	// completed sync to the destination. When the destination confirms it
	// still holds exactly what that sync left, only the entries changed
	// since are sent (incremental sync). Push updates it.
	Record *Record
	// Attempts is how many times rsync is tried (default 5).
	Attempts int
	// Backoff is the first pause between tries, doubled each time (default
	// 2 s).
	Backoff time.Duration
	// Keepalive is how often the connection to the destination is asked
	// for a sign of life (default keepalive.DefaultInterval); one silent
	// for keepalive.Missed intervals is closed, and the try fails.
	Keepalive time.Duration
	// Progress, when set, is called with live progress at most every
	// ProgressInterval (default 1 s).
	Progress         func(Progress)
	ProgressInterval time.Duration
	// BandwidthLimit caps what the transfer sends, in bytes per second on
	// the wire (after compression, as rsync's --bwlimit counts); 0: none
	// of its own.
	BandwidthLimit int64
	// NodeBandwidth, when set, is a limit all of a node's transfers share
	// (stream.NewLimiter of the agent's --max-bandwidth).
	NodeBandwidth *rate.Limiter
	// Rsync is the rsync binary, under /usr (default: rsync from PATH).
	Rsync string
	// Log receives rsync's error output and the transfer's steps.
	Log logr.Logger

	// limiter paces this push's tries at BandwidthLimit.
	limiter *rate.Limiter
}

// Result is the outcome of a push.
type Result struct {
	Stats
	// ExitCode is rsync's exit status of the last try: 0 only when an
	// rsync ran to 0 (or nothing was to be sent), exitcode.NotRun when the
	// try failed before rsync could end on its own.
	ExitCode int
	// Attempts is the number of tries made.
	Attempts int
	// Start and End bound the whole push.
	Start, End time.Time
	// Errors is rsync's error output of the last try (bounded), then the
	// remote side's.
	Errors string
	// Unchanged: the destination already held this very tree, and nothing
	// was sent (Attempts is 0).
	Unchanged bool
	// Listed is how many entries an incremental sync handed rsync (0: the
	// sync ran over the whole tree, or was skipped).
	Listed int
	// InPlace: rsync updated changed files in place (--inplace), the
	// destination allowing it and its replica having no hard links.
	InPlace bool
}

func (o *Options) defaults() {
	if o.User == "" {
		o.User = "root"
	}
	if o.Path == "" {
		o.Path = "/"
	}
	if o.Port == 0 {
		o.Port = 22
	}
	if o.Attempts <= 0 {
		o.Attempts = 5
	}
	if o.Compression.Choice == "" {
		o.Compression = compression.Default
	}
	if o.Backoff <= 0 {
		o.Backoff = 2 * time.Second
	}
	if o.Keepalive <= 0 {
		o.Keepalive = keepalive.DefaultInterval
	}
	if o.ProgressInterval <= 0 {
		o.ProgressInterval = time.Second
	}
	if o.Log.GetSink() == nil {
		o.Log = logr.Discard()
	}
	o.limiter = stream.NewLimiter(o.BandwidthLimit)
}
