package transfer_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/internal/volsyncmover"
	"github.com/ferrysync/ferry/pkg/transfer/compression"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
	"github.com/ferrysync/ferry/pkg/transfer/sender"
)

// BenchmarkDataPlane measures Ferry's client and endpoint against stock
// rsync and OpenSSH in the same run, on loopback, and prints a table of min
// and median and the ratios. It runs with make bench (go test -bench,
// -benchtime 1x), never in make test: it writes several GiB and takes
// minutes. FERRY_BENCH_SCALE (default 1) scales the data sizes;
// FERRY_BENCH_RUNS (default 5) the runs per figure; FERRY_BENCH_CASES
// (default ABCDEFGHR) picks cases by letter (R: peak memory of 20 concurrent
// transfers). The methods take turns run by run (this machine is shared and
// noisy: a slow spell then hits every method).
func BenchmarkDataPlane(tb *testing.B) {
	testenv.NeedRoot(tb)
	t := testing.TB(tb)
	scale := testenv.EnvFloat("FERRY_BENCH_SCALE", 1)
	runs := int(testenv.EnvFloat("FERRY_BENCH_RUNS", 5))
	cases := os.Getenv("FERRY_BENCH_CASES")
	if cases == "" {
		cases = "ABCDEFGHR"
	}
	picked := func(letters string) bool { return strings.ContainsAny(cases, letters) }
	b := newBench(t)

	var rows []benchRow
	// A: fresh 2 GiB of large incompressible files.
	if picked("A") {
		src := b.dir("A-src")
		writeRandomFiles(t, src, 8, int64(256<<20*scale))
		rows = append(rows, b.measure("A fresh 2 GiB large files", src, runs, func(dst string) { clear(t, dst) }))
	}
	// B: 1 % of 1 GiB changed in scattered 64 KiB blocks since the last
	// sync: each method first syncs the file as it is (not timed), then
	// blocks of it change.
	if picked("B") {
		src := b.dir("B-src")
		size := int64(1 << 30 * scale)
		writeRandomFiles(t, src, 1, size)
		var changed int64
		row := b.measureAfter("B 1% of 1 GiB changed", src, runs, b.syncThen(func(round int) {
			changed = changeBlocks(t, filepath.Join(src, "f0"), size/100, 64<<10, round)
		}))
		row.note = fmt.Sprintf("changed %s", mib(changed))
		rows = append(rows, row)
	}
	// C and D: 100,000 small files in 1,000 directories, no change and fresh.
	if picked("CDG") {
		src := b.dir("CD-src")
		n := int(100000 * scale)
		writeSmallFiles(t, src, n, 1000)
		rows = append(rows, b.measure("C no change, 100k small files", src, runs, func(dst string) {
			if _, err := os.Stat(filepath.Join(dst, "d0")); err != nil {
				clear(t, dst)
				out, err := exec.Command("cp", "-a", src+"/.", dst).CombinedOutput()
				require.NoError(t, err, string(out))
			}
		}))
		rows = append(rows, b.measure("D fresh, 100k small files", src, runs, func(dst string) { clear(t, dst) }))
		// G: 1 % of those files changed since the last sync.
		srcG := b.dir("G-src")
		mustRun(t, "cp", "-a", src+"/.", srcG)
		rows = append(rows, b.measureAfter("G 1% of 100k small files changed", srcG, runs, b.syncThen(func(round int) {
			changeFiles(t, srcG, n/100, 1000, round)
		})))
	}
	// E: preallocated (zero-filled) database files, a few MiB changed
	// since the last sync.
	if picked("E") {
		src := b.dir("E-src")
		size := int64(256 << 20 * scale)
		for i := 0; i < 4; i++ {
			mustRun(t, "fallocate", "-l", strconv.FormatInt(size, 10), filepath.Join(src, fmt.Sprintf("db%d", i)))
		}
		var changed int64
		row := b.measureAfter("E 1 GiB preallocated, 4 MiB changed", src, runs, b.syncThen(func(round int) {
			changed = 0
			for i := 0; i < 4; i++ {
				changed += changeBlocks(t, filepath.Join(src, fmt.Sprintf("db%d", i)), 1<<20, 16<<10, round)
			}
		}))
		row.note = fmt.Sprintf("changed %s", mib(changed))
		rows = append(rows, row)
	}
	// F: fresh text (application logs).
	if picked("F") {
		src := b.dir("F-src")
		writeLogs(t, filepath.Join(src, "app.log"), int64(200<<20*scale))
		rows = append(rows, b.measure("F 200 MiB of text logs, fresh", src, runs, func(dst string) { clear(t, dst) }))
	}
	// H: the shape of the case that found Ferry's former default (zstd:1)
	// sending more than VolSync's -z: 256 MiB of zeros and 12 MiB of text,
	// fresh.
	if picked("H") {
		src := b.dir("H-src")
		mustRun(t, "truncate", "-s", strconv.FormatInt(int64(256<<20*scale), 10), filepath.Join(src, "zeros"))
		writeLogs(t, filepath.Join(src, "app.log"), int64(12<<20*scale))
		rows = append(rows, b.measure("H 256 MiB zeros + 12 MiB text, fresh", src, runs, func(dst string) { clear(t, dst) }))
	}
	var rss int64
	if picked("R") {
		rss = b.concurrentRSS(20)
	}
	printTable(t, rows, rss)
}

type benchRow struct {
	name    string
	mins    map[string]time.Duration
	medians map[string]time.Duration
	wire    map[string]int64
	note    string
}

// methods in table order; the ratios are to volsync. ferry compresses as it
// does by default (compression.Default), ferry-zstd1 and ferry-zstd3 at
// those levels (the candidates for the default; VolSync's two rsync 3.5
// peers negotiate zstd at level 3), ferry-none not at all.
var methods = []string{"ferry", "ferry-zstd1", "ferry-zstd3", "ferry-none", "volsync", "rsync-aes", "ceiling"}

type bench struct {
	t      testing.TB
	root   string
	k      *keyset
	port   int // Ferry endpoint
	dst    string
	sshd   int
	plain  *keyset
	volDst string
	ssh    *volsyncmover.Source
	plainS *volsyncmover.Source
	// record is what Ferry's source remembers of its last sync to dst, as
	// the agent keeps it per replication.
	record sender.Record
}

func newBench(t testing.TB) *bench {
	b := &bench{t: t, root: t.TempDir(), k: keys(t, "bench"), plain: keys(t, "bench-plain")}
	b.dst = b.dir("ferry-dst")
	var ev events
	// As a Snapshot destination's (VolSync's usual), where changed files
	// are updated in place.
	_, b.port = serveDestination(t, endpoint.Destination{Keys: b.k.dst, Volume: b.dst, Privileged: true, InPlace: true}, &ev)
	b.volDst = b.dir("volsync-dst")
	b.sshd = volsyncDestination(t, b.k, b.volDst, b.plain.srcData["source.pub"]).Port
	b.ssh = volsyncSource(t, b.k, b.sshd)
	b.plainS = volsyncSource(t, b.plain, b.sshd)
	return b
}

func (b *bench) dir(name string) string {
	d := filepath.Join(b.root, name)
	require.NoError(b.t, os.MkdirAll(d, 0o755))
	return d
}

// measure runs every method in turn, runs times, each after reset(dst),
// and keeps min and median.
func (b *bench) measure(name, src string, runs int, reset func(dst string)) benchRow {
	return b.measureAfter(name, src, runs, func(_, _, dst string) { reset(dst) })
}

// syncThen is a reset for changes since the last sync: the method syncs
// the tree as it is (not timed), then change makes the round's change.
func (b *bench) syncThen(change func(round int)) func(method, src, dst string) {
	round := 0
	return func(method, src, _ string) {
		b.run(method, src)
		round++
		change(round)
	}
}

// measureAfter is measure with a reset that knows the method.
func (b *bench) measureAfter(name, src string, runs int, reset func(method, src, dst string)) benchRow {
	row := benchRow{name: name, mins: map[string]time.Duration{}, medians: map[string]time.Duration{}, wire: map[string]int64{}}
	times := map[string][]time.Duration{}
	for i := 0; i < runs; i++ {
		for _, m := range methods {
			dst := b.volDst
			if strings.HasPrefix(m, "ferry") {
				dst = b.dst
			}
			reset(m, src, dst) // data stays in the page cache, as in the stock measurements
			start := time.Now()
			row.wire[m] = b.run(m, src)
			times[m] = append(times[m], time.Since(start))
		}
	}
	for _, m := range methods {
		ts := times[m]
		sort.Slice(ts, func(i, j int) bool { return ts[i] < ts[j] })
		row.mins[m], row.medians[m] = ts[0], ts[len(ts)/2]
		b.t.Logf("%s / %s: median %v (runs %v), wire %s", name, m, row.medians[m], ts, mib(row.wire[m]))
	}
	return row
}

// run syncs src with one method and returns rsync's bytes on the wire.
func (b *bench) run(method, src string) int64 {
	t := b.t
	switch method {
	case "ferry", "ferry-zstd1", "ferry-zstd3", "ferry-none":
		o := sender.Options{Address: "127.0.0.1", Port: b.port, Keys: b.k.src, Scratch: t.TempDir(), Volume: src, Attempts: 1, Record: &b.record}
		switch method {
		case "ferry-zstd1":
			o.Compression = compression.Compression{Choice: "zstd", Level: 1}
		case "ferry-zstd3":
			o.Compression = compression.Compression{Choice: "zstd", Level: 3}
		case "ferry-none":
			o.Compression = compression.None
		}
		res, err := sender.Push(context.Background(), o)
		require.NoError(t, err, res.Errors)
		return res.BytesSent + res.BytesReceived
	case "volsync":
		out, err := b.ssh.Rsync(context.Background(), src, "--no-h")
		require.NoError(t, err)
		_, err = b.ssh.Shutdown(context.Background(), 0)
		require.NoError(t, err)
		return wireBytes(out)
	case "rsync-aes":
		rsh := fmt.Sprintf("ssh -c aes128-gcm@openssh.com -i %s -p %d -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -F /dev/null",
			b.plainS.Identity(), b.sshd)
		out := mustRun(t, "rsync", "-a", "--delete", "--stats", "-e", rsh, src+"/", "root@127.0.0.1:"+b.volDst+"/")
		return wireBytes(out)
	case "ceiling":
		cmd := fmt.Sprintf("tar cf - -C %s . | ssh -c aes128-gcm@openssh.com -i %s -p %d -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -F /dev/null root@127.0.0.1 'wc -c'",
			src, b.plainS.Identity(), b.sshd)
		out := mustRun(t, "bash", "-o", "pipefail", "-c", cmd)
		m := countLine.FindStringSubmatch(out) // the bytes the far end counted
		require.NotNil(t, m, out)
		n, _ := strconv.ParseInt(m[1], 10, 64)
		return n
	}
	t.Fatalf("unknown method %s", method)
	return 0
}

// concurrentRSS starts n destinations and n concurrent Ferry pushes of a
// small tree and returns the test process's peak RSS: the endpoint's and the
// client side's Go memory together (rsync processes are not counted).
func (b *bench) concurrentRSS(n int) int64 {
	t := b.t
	src := b.dir("rss-src")
	writeRandomFiles(t, src, 4, 16<<20)
	writeSmallFiles(t, src, 2000, 20)
	srv := endpoint.New(t.TempDir())
	defer srv.Close()
	runtime.GC()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		k := keys(t, "bench")
		addr, err := srv.Add(endpoint.Destination{ID: fmt.Sprint(i), Keys: k.dst, Volume: b.dir(fmt.Sprintf("rss-dst-%d", i)),
			Privileged: true, ListenAddr: "127.0.0.1:0"})
		require.NoError(t, err)
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := sender.Push(context.Background(), sender.Options{Address: "127.0.0.1", Port: addr.(*net.TCPAddr).Port,
				Keys: k.src, Volume: src, Scratch: t.TempDir(), Attempts: 1})
			require.NoError(t, err, res.Errors)
		}()
	}
	wg.Wait()
	return peakRSS(t)
}

func printTable(t testing.TB, rows []benchRow, rss int64) {
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%-38s", "case: min / median")
	for _, m := range methods {
		fmt.Fprintf(&sb, " %17s", m)
	}
	fmt.Fprintf(&sb, "   %-14s %-15s %-12s\n", "ferry/volsync", "ferry/rsync-aes", "ferry/ceiling")
	for _, r := range rows {
		ratio := func(a, b time.Duration) string {
			if b == 0 {
				return "-"
			}
			return fmt.Sprintf("%.2fx", float64(a)/float64(b))
		}
		fmt.Fprintf(&sb, "%-38s", r.name)
		for _, m := range methods {
			fmt.Fprintf(&sb, " %17s", r.mins[m].Round(10*time.Millisecond).String()+" / "+r.medians[m].Round(10*time.Millisecond).String())
		}
		fmt.Fprintf(&sb, "   %-14s %-15s %-12s\n", ratio(r.medians["ferry"], r.medians["volsync"]),
			ratio(r.medians["ferry"], r.medians["rsync-aes"]), ratio(r.medians["ferry"], r.medians["ceiling"]))
		fmt.Fprintf(&sb, "%-38s", "  wire bytes "+r.note)
		for _, m := range methods {
			fmt.Fprintf(&sb, " %17s", thousands(r.wire[m]))
		}
		fmt.Fprintf(&sb, "   wire ferry/volsync %.2fx\n", float64(r.wire["ferry"])/float64(max(r.wire["volsync"], 1)))
	}
	fmt.Fprintf(&sb, "peak RSS of the Go process (endpoint and client) with 20 concurrent transfers: %s\n", mib(rss))
	fmt.Print(sb.String())
	t.Log(sb.String())
}

// thousands writes n with thousands separators, as rsync's --stats do.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

var countLine = regexp.MustCompile(`(?m)^(\d+)$`)

var statsBytes = regexp.MustCompile(`Total bytes (sent|received): ([\d,]+)`)
