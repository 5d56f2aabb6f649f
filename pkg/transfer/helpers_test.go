package transfer_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/stretchr/testify/require"

	"github.com/ferrysync/ferry/internal/fstree"
	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
	"github.com/ferrysync/ferry/pkg/transfer/reexec"
	"github.com/ferrysync/ferry/pkg/transfer/sender"
	"github.com/ferrysync/ferry/pkg/transfer/sshkeys"
)

func TestMain(m *testing.M) {
	reexec.Init()
	os.Exit(m.Run())
}

// keyset is one replication relationship's keys, as Secrets hold them.
type keyset struct {
	dstData, srcData map[string][]byte
	dst              *sshkeys.Destination
	src              *sshkeys.Source
}

var (
	keyCache   = map[string]*keyset{}
	keyCacheMu sync.Mutex
)

// keys returns a key set by name, generating it once per test binary
// (4096-bit RSA takes about a second).
func keys(t testing.TB, name string) *keyset {
	t.Helper()
	keyCacheMu.Lock()
	defer keyCacheMu.Unlock()
	if k, ok := keyCache[name]; ok {
		return k
	}
	d, s, err := sshkeys.Secrets()
	require.NoError(t, err)
	k := &keyset{dstData: d, srcData: s}
	k.dst, err = sshkeys.ParseDestination(d)
	require.NoError(t, err)
	k.src, err = sshkeys.ParseSource(s)
	require.NoError(t, err)
	keyCache[name] = k
	return k
}

// events records a destination's events.
type events struct {
	mu  sync.Mutex
	all []endpoint.Event
}

func (e *events) add(ev endpoint.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.all = append(e.all, ev)
}

// waitFor polls, with a deadline, for an event of kind and returns it.
func (e *events) waitFor(t testing.TB, kind endpoint.EventKind) endpoint.Event {
	t.Helper()
	var found endpoint.Event
	testenv.Eventually(t, "a "+string(kind)+" event", 20*time.Second, func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		for _, ev := range e.all {
			if ev.Kind == kind {
				found = ev
				return true
			}
		}
		return false
	})
	return found
}

// count says how many events of kind there were.
func (e *events) count(kind endpoint.EventKind) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, ev := range e.all {
		if ev.Kind == kind {
			n++
		}
	}
	return n
}

// waitForCount polls, with a deadline, until there were n events of kind.
func (e *events) waitForCount(t testing.TB, kind endpoint.EventKind, n int) {
	t.Helper()
	testenv.Eventually(t, fmt.Sprintf("%d %s events", n, kind), 20*time.Second, func() bool { return e.count(kind) >= n })
}

// serve starts an endpoint with one privileged destination and returns
// its port; opts add to the endpoint's options.
func serve(t testing.TB, k *keyset, volume string, ev *events, opts ...endpoint.Option) (*endpoint.Server, int) {
	t.Helper()
	return serveDestination(t, endpoint.Destination{Keys: k.dst, Volume: volume, Privileged: true}, ev, opts...)
}

// serveDestination is serve for a destination set up as d says.
func serveDestination(t testing.TB, d endpoint.Destination, ev *events, opts ...endpoint.Option) (*endpoint.Server, int) {
	t.Helper()
	srv := endpoint.New(t.TempDir(), append([]endpoint.Option{endpoint.WithLogger(testr.NewWithInterface(t, testr.Options{}))}, opts...)...)
	t.Cleanup(srv.Close)
	d.ID, d.ListenAddr, d.Events = "ns/dest", "127.0.0.1:0", ev.add
	addr, err := srv.Add(d)
	require.NoError(t, err)
	return srv, addr.(*net.TCPAddr).Port
}

// push runs Ferry's source against a local endpoint.
func push(t testing.TB, k *sshkeys.Source, port int, src string, mod func(*sender.Options)) (sender.Result, error) {
	t.Helper()
	o := sender.Options{Address: "127.0.0.1", Port: port, Keys: k, Volume: src, Scratch: t.TempDir(), Attempts: 1, Log: testr.NewWithInterface(t, testr.Options{})}
	if mod != nil {
		mod(&o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := sender.Push(ctx, o)
	t.Logf("push: exit %d after %d tries, err %v\n%s\n%s", res.ExitCode, res.Attempts, err, res.Summary, res.Errors)
	return res, err
}

// requireSame fails unless the trees under want and got are equal, but for
// the paths in absent, which got must not have.
func requireSame(t testing.TB, want, got string, absent ...string) {
	t.Helper()
	requireSameMsg(t, want, got, "destination differs from source", absent...)
}

// requireSameMsg is requireSame saying why the trees must be equal.
func requireSameMsg(t testing.TB, want, got, why string, absent ...string) {
	t.Helper()
	w, err := fstree.Snapshot(want)
	require.NoError(t, err)
	g, err := fstree.Snapshot(got)
	require.NoError(t, err)
	for _, p := range absent {
		require.Contains(t, w, p)
		require.NotContains(t, g, p)
		delete(w, p)
	}
	require.Empty(t, fstree.Diff(w, g), why)
}

// fixture builds the fidelity tree in a fresh directory.
func fixture(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "src")
	require.NoError(t, os.Mkdir(dir, 0o755))
	require.NoError(t, fstree.Build(dir))
	return dir
}
