//go:build ferryfault

package transfer_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/pkg/transfer/cgroup"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
	"github.com/ferrysync/ferry/pkg/transfer/internal/fault"
	"github.com/ferrysync/ferry/pkg/transfer/sender"
)

// TestFaultsBetweenChanges interleaves the change fuzzer's random changes
// with a fault in every sync: a step of either end that fails (dial,
// handshake, digest offer and answer, rsh socket, cgroup, confinement,
// exec, the shutdown or its reply lost), either rsync killed a random
// moment into the transfer, the connection cut, the destination restarted
// between the transfer and its record, the source restarted mid-transfer
// (its record lost), the destination volume full mid-file. After every
// faulted sync and the clean one that follows it checks, with the fidelity
// checker: a push that reports success left a replica equal to the source;
// a sync the destination reports succeeded left one too; the next sync
// after the fault converges. Every kind of fault must have fired by the
// end (one that did not, a kill that came too late, is tried again). The
// seed is fixed (FERRY_FUZZ_SEED picks another, FERRY_FAULT_ROUNDS sets
// the rounds; make fuzz runs thousands with a random seed). It needs the
// ferryfault build tag, which turns the data plane's fault hooks on.
func TestFaultsBetweenChanges(t *testing.T) {
	testenv.NeedRoot(t)
	seed := uint64(testenv.EnvFloat("FERRY_FUZZ_SEED", 21))
	rounds := int(testenv.EnvFloat("FERRY_FAULT_ROUNDS", 80))
	f := newFaultRun(t, seed)
	cases := f.cases()
	fired := make([]int, len(cases))
	var queue []int
	for round := 0; round < rounds; round++ {
		if len(queue) == 0 {
			queue = f.rng.Perm(len(cases))
		}
		i := queue[0]
		queue = queue[1:]
		if f.round(round, &cases[i]) {
			fired[i]++
		} else {
			queue = append(queue, i) // it came too late: again, later
		}
	}
	var missing []string
	counts := map[string]int{}
	for i, n := range fired {
		counts[cases[i].name] = n
		if n == 0 {
			missing = append(missing, cases[i].name)
		}
	}
	t.Logf("seed %d, %d rounds, faults fired: %v", seed, rounds, counts)
	require.Empty(t, missing, "faults that never fired in %d rounds: raise FERRY_FAULT_ROUNDS", rounds)
}

// faultRun is TestFaultsBetweenChanges' source tree, destination volume
// and endpoint (behind a proxy that can cut connections), the fault
// injector and the source's record, carried from round to round.
type faultRun struct {
	t        *testing.T
	seed     uint64
	rng      *rand.Rand
	k        *keyset
	src, dst string
	poolName string
	pool     *cgroup.Pool
	srv      *endpoint.Server
	dest     endpoint.Destination
	px       *proxy
	inj      *injector
	ev       *events
	record   *sender.Record
	// attempts is the round's tries: one, or a retry after the fault.
	attempts int
}

// newFaultRun starts the destination's endpoint on a 64 MiB volume and
// writes the source's first tree.
func newFaultRun(t *testing.T, seed uint64) *faultRun {
	f := &faultRun{t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, seed)), k: keys(t, "faults"),
		src: t.TempDir(), dst: smallVolume(t, 64<<20), poolName: "ferry-faults-" + strconv.Itoa(os.Getpid()),
		inj: &injector{}, ev: &events{}, record: &sender.Record{}, attempts: 1}
	startTree(t, f.rng, f.src, true)
	var err error
	f.pool, err = cgroup.New(f.poolName, cgroup.Limits{})
	require.NoError(t, err)
	t.Cleanup(f.pool.Remove)
	lim := endpoint.DefaultLimits
	lim.HandshakeRate = 1000 // a skipped sync takes milliseconds
	f.srv = endpoint.New(t.TempDir(), endpoint.WithLogger(testr.NewWithInterface(t, testr.Options{})),
		endpoint.WithLimits(lim), endpoint.WithCgroups(f.pool))
	t.Cleanup(f.srv.Close)
	f.dest = endpoint.Destination{ID: "ns/dest", Keys: f.k.dst, Volume: f.dst, Privileged: true, HoldOnShutdown: true,
		ListenAddr: "127.0.0.1:0", Events: f.ev.add}
	addr, err := f.srv.Add(f.dest)
	require.NoError(t, err)
	f.dest.ListenAddr = addr.String() // a restarted destination listens where it did
	f.px = newProxy(t, addr.String())
	t.Cleanup(fault.Set(f.inj))
	return f
}

// cases are the kinds of fault, each a step that fails or an act on a
// running transfer.
func (f *faultRun) cases() []faultCase {
	kill := func(pidfd int) bool { return unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0) == nil }
	var cases []faultCase
	for _, p := range []fault.Point{fault.Dial, fault.Offer, fault.RshSocket, fault.SourceCgroup, fault.SourceConfine,
		fault.SourceStart, fault.Shutdown, fault.Handshake, fault.Answer, fault.ReceiverCgroup, fault.ReceiverConfine,
		fault.ReceiverStart, fault.ShutdownReply} {
		cases = append(cases, faultCase{name: string(p) + " fails", at: p})
	}
	return append(cases,
		faultCase{name: "source rsync killed", started: fault.SourceRsync, act: kill, big: true},
		faultCase{name: "receiver killed", started: fault.Receiver, act: kill, big: true},
		faultCase{name: "connection cut", started: fault.Receiver, act: func(int) bool { return f.px.cut() > 0 }, big: true},
		faultCase{name: "source restarted mid-transfer", started: fault.SourceRsync, act: kill, big: true,
			after: func() { f.record = &sender.Record{} }},
		faultCase{name: "destination restarted before its record", at: fault.Shutdown, hook: func() {
			f.srv.Remove(f.dest.ID)
			if _, err := f.srv.Add(f.dest); err != nil {
				f.t.Errorf("restart the destination: %v", err)
			}
		}},
		faultCase{name: "destination volume full", big: true, full: true,
			before: func() { resizeVolume(f.t, f.dst, usedBytes(f.t, f.dst)+512<<10) },
			after:  func() { resizeVolume(f.t, f.dst, 64<<20) }},
	)
}

// options are the pushes' options: through the proxy, with the record, the
// round's tries and the cgroup pool.
func (f *faultRun) options(o *sender.Options) {
	o.Port, o.Record, o.Cgroups, o.Attempts, o.Backoff = f.px.port, f.record, f.pool, f.attempts, time.Millisecond
}

// settle waits until the destination has reported the sync's end and
// lifts the hold a success took, as the agent does once it snapshots.
func (f *faultRun) settle() {
	testenv.Eventually(f.t, "the sync's end delivered", 20*time.Second, func() bool { return !f.srv.Ending(f.dest.ID) })
	f.srv.Hold(f.dest.ID, false)
}

// round changes the source at random, pushes with c armed, checks what
// either end reported succeeded, then pushes again and checks that the
// replica converges. It says whether the fault fired.
func (f *faultRun) round(n int, c *faultCase) bool {
	t := f.t
	changed := ""
	for i := f.rng.IntN(4); i > 0; i-- {
		changed += change(t, f.rng, f.src, n*3+i) + " "
	}
	if c.big { // something to send for long enough to be cut short
		require.NoError(t, os.RemoveAll(filepath.Join(f.src, "big"))) // the changes may have made it a directory
		require.NoError(t, os.WriteFile(filepath.Join(f.src, "big"), randomBytes(f.rng, 2<<20), 0o644))
	}
	f.attempts = 1 + f.rng.IntN(2)
	what := fmt.Sprintf("round %d (seed %d), %s (%d tries) after %q", n, f.seed, c.name, f.attempts, changed)
	fired := f.faulted(c, what)

	res, err := push(t, f.k.src, f.px.port, f.src, f.options)
	require.NoError(t, err, "%s: the next sync converges\n%s", what, res.Errors)
	requireSameMsg(t, f.src, f.dst, what+": the next sync converges")
	f.settle()
	testenv.Eventually(t, what+": every transfer's cgroup removed", 10*time.Second, func() bool {
		return len(groupsIn(f.poolName)) == 0
	})
	return fired
}

// faulted pushes with c armed and checks that a push reporting success,
// or a sync the destination reports succeeded, left a replica equal to the
// source, and that a full volume was said so and not retried.
func (f *faultRun) faulted(c *faultCase, what string) bool {
	t := f.t
	if c.before != nil {
		c.before()
	}
	seen := f.ev.len()
	armed := f.inj.arm(c, time.Duration(f.rng.IntN(30))*time.Millisecond)
	res, err := push(t, f.k.src, f.px.port, f.src, f.options)
	armed.pending.Wait()
	f.inj.arm(nil, 0)
	f.settle()
	if c.after != nil {
		c.after()
	}
	if err == nil {
		requireSameMsg(t, f.src, f.dst, what+": the push reported success (unchanged "+strconv.FormatBool(res.Unchanged)+")")
	}
	if c.full && err != nil {
		require.Equal(t, 1, res.Attempts, "%s: a full volume is not retried", what)
		require.True(t, slices.ContainsFunc(f.ev.since(seen), func(e endpoint.Event) bool { return e.Kind == endpoint.SyncEnded && e.Needed > 0 }),
			"%s: the destination hears how much the source's volume uses", what)
	}
	for _, e := range f.ev.since(seen) {
		if e.Kind == endpoint.SyncEnded && e.ExitCode == 0 {
			requireSameMsg(t, f.src, f.dst, what+": the destination reported success")
		}
	}
	return armed.fired.Load() || (c.full && err != nil)
}

// faultCase is one kind of fault the test injects.
type faultCase struct {
	name string
	// at is the step that fails, or where hook runs instead.
	at   fault.Point
	hook func()
	// started is the step whose process act is given, a random moment
	// after it starts (its pidfd: never another process of the same pid);
	// act says whether it took effect.
	started fault.Point
	act     func(pidfd int) bool
	// big: the round rewrites a large file, so that the transfer lasts.
	big bool
	// full: the destination volume cannot hold the round's change; the
	// fault fired when the push failed.
	full bool
	// before and after run around the faulted push.
	before, after func()
}

// armedFault is a fault case armed for one push.
type armedFault struct {
	*faultCase
	delay   time.Duration
	fired   atomic.Bool // the fault took effect
	acted   atomic.Bool // act was started (once a push)
	pending sync.WaitGroup
}

// injector is the test's fault.Injector: it fires the armed fault once.
type injector struct {
	mu    sync.Mutex
	armed *armedFault
}

// arm arms c (nil: nothing) for the next push and returns it.
func (i *injector) arm(c *faultCase, delay time.Duration) *armedFault {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.armed = nil
	if c != nil {
		i.armed = &armedFault{faultCase: c, delay: delay}
	}
	return i.armed
}

func (i *injector) current() *armedFault {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.armed
}

// At fails the armed step once, or runs its hook there once.
func (i *injector) At(p fault.Point) error {
	a := i.current()
	if a == nil || a.at != p || !a.fired.CompareAndSwap(false, true) {
		return nil
	}
	if a.hook != nil {
		a.hook()
		return nil
	}
	return fault.ErrInjected
}

// Started acts on the first process started at the armed step, after the
// armed delay.
func (i *injector) Started(p fault.Point, pid int) {
	a := i.current()
	if a == nil || a.act == nil || a.started != p || !a.acted.CompareAndSwap(false, true) {
		return
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return // gone already
	}
	a.pending.Add(1)
	time.AfterFunc(a.delay, func() {
		defer a.pending.Done()
		defer unix.Close(fd)
		if a.act(fd) {
			a.fired.Store(true)
		}
	})
}

// len says how many events there were.
func (e *events) len() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.all)
}

// since returns the events after the first n.
func (e *events) since(n int) []endpoint.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]endpoint.Event(nil), e.all[n:]...)
}
