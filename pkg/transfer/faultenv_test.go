//go:build ferryfault

package transfer_test

// What the fault test's rounds run in: a small volume that fills up, a
// proxy that can cut connections, the transfers' cgroups.

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferrysync/ferry/pkg/transfer/cgroup"
)

// smallVolume mounts a tmpfs of size bytes, to be filled up.
func smallVolume(t *testing.T, size int64) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, unix.Mount("ferry-faults", dir, "tmpfs", 0, "size="+strconv.FormatInt(size, 10)))
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// resizeVolume sets the size of a tmpfs from smallVolume.
func resizeVolume(t *testing.T, dir string, size int64) {
	t.Helper()
	require.NoError(t, unix.Mount("", dir, "", unix.MS_REMOUNT, "size="+strconv.FormatInt(size, 10)))
}

// usedBytes is how much of a filesystem is in use.
func usedBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	require.NoError(t, unix.Statfs(dir, &st))
	return int64(st.Blocks-st.Bfree) * st.Bsize
}

// proxy forwards TCP connections to a destination and can cut them all at
// once, as a failing network would.
type proxy struct {
	port  int
	to    string
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func newProxy(t *testing.T, to string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &proxy{port: portOf(ln.Addr()), to: to, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() {
		_ = ln.Close()
		p.cut()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.forward(c)
		}
	}()
	return p
}

// forward copies between c and a new connection to the destination until
// either side ends or the proxy cuts them.
func (p *proxy) forward(c net.Conn) {
	d, err := net.Dial("tcp", p.to)
	if err != nil {
		_ = c.Close()
		return
	}
	p.mu.Lock()
	p.conns[c], p.conns[d] = struct{}{}, struct{}{}
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	pipe := func(w, r net.Conn) {
		_, _ = io.Copy(w, r)
		done <- struct{}{}
	}
	go pipe(d, c)
	go pipe(c, d)
	<-done
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, d)
	p.mu.Unlock()
	_ = c.Close()
	_ = d.Close()
}

// cut closes every forwarded connection and says how many there were.
func (p *proxy) cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		_ = c.Close()
	}
	n := len(p.conns)
	p.conns = map[net.Conn]struct{}{}
	return n / 2
}

// groupsIn lists the transfers' cgroups left in the pool named name, in any
// hierarchy.
func groupsIn(name string) []string {
	var out []string
	_ = filepath.WalkDir(cgroup.Root, func(path string, d os.DirEntry, err error) error {
		switch {
		case err != nil || !d.IsDir():
			return nil
		case filepath.Base(filepath.Dir(path)) == name:
			out = append(out, path)
			return filepath.SkipDir
		}
		return nil
	})
	return out
}
