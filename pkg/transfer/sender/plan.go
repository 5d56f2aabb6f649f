package sender

import (
	"context"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/ferrysync/ferry/pkg/transfer/internal/fault"
	"github.com/ferrysync/ferry/pkg/transfer/treedigest"
)

// Record is what a source remembers of its last completed sync to a
// destination: the walk of the tree it sent (treedigest.Tree). Its zero
// value remembers nothing. The caller keeps one per replication, in
// memory: a restarted agent, or a source copy mounted on another node,
// starts without one and syncs in full.
type Record struct {
	mu   sync.Mutex
	tree *treedigest.Tree
}

func (r *Record) get() *treedigest.Tree {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tree
}

func (r *Record) set(t *treedigest.Tree) {
	if r != nil {
		r.mu.Lock()
		r.tree = t
		r.mu.Unlock()
	}
}

// listFile names the list of an incremental sync's entries, in the
// directory rsync's remote-shell helper shares with the agent.
const listFile = "changed"

// plan is what a sync sends: nothing (unchanged), the entries of list
// (an incremental sync), or, with neither, the whole tree; inPlace, with
// rsync --inplace. tree is the walk of the volume, for the source's next
// Record.
type plan struct {
	tree      *treedigest.Tree
	unchanged bool
	list      []string
	inPlace   bool
}

// prepare walks the volume while it connects and, with a Record, asks the
// destination whether it still holds what the recorded sync left; then it
// offers the new tree's digest. Anything that goes wrong means a sync of
// the whole tree.
func prepare(ctx context.Context, o *Options, conn *connection) plan {
	start := time.Now()
	base := o.Record.get()
	type dial struct {
		client  *ssh.Client
		err     error
		base    bool
		inPlace bool
	}
	dialed := make(chan dial, 1)
	go func() { // meanwhile: the destination checks its volume as the source walks
		c, err := conn.get()
		d := dial{client: c, err: err}
		if err == nil && base != nil {
			var reply []byte
			d.base, reply, _ = conn.request(c, treedigest.BaseRequest, base.Sum[:])
			d.inPlace = d.base && string(reply) == treedigest.InPlace
		}
		dialed <- d
	}()
	tree, err := walk(ctx, o)
	d := <-dialed
	if d.err != nil {
		return plan{} // the first try reports it
	}
	if err != nil {
		o.Log.Info("could not sum the volume's tree; syncing in full", "error", err.Error())
		return plan{}
	}
	p := plan{tree: tree}
	ok, _, err := conn.request(d.client, treedigest.Request, tree.Sum[:])
	p.unchanged = err == nil && ok && fault.At(fault.Offer) == nil
	if !p.unchanged && d.base {
		if list, ok := treedigest.Changes(base, tree); ok {
			p.list = list
		}
		// The replica is the recorded tree: without hard links, no file
		// written in place can change another name's data.
		p.inPlace = d.inPlace && !base.HardLinks()
	}
	o.Log.V(1).Info("offered the tree's digest", "unchanged", p.unchanged, "base", d.base, "listed", len(p.list),
		"inPlace", p.inPlace, "walk", time.Since(start).String())
	return p
}

// walk sums the volume, keeping the walk only when there is a Record to
// keep it in.
func walk(ctx context.Context, o *Options) (*treedigest.Tree, error) {
	if o.Record != nil {
		return treedigest.Walk(ctx, o.Volume)
	}
	sum, err := treedigest.Of(ctx, o.Volume)
	return &treedigest.Tree{Sum: sum}, err
}
