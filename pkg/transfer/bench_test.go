package transfer_test

import (
	"context"
	"fmt"
	"math/rand/v2"
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
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
	"github.com/ferrysync/ferry/pkg/transfer/source"
)

// TestBenchmark measures Ferry's client and endpoint against stock rsync and
// OpenSSH in the same run, on loopback, and prints a table of medians and
// ratios. It runs with make bench (FERRY_BENCH=1), not in make test: it
// writes several GiB and takes minutes. FERRY_BENCH_SCALE (default 1)
// scales the data sizes; FERRY_BENCH_RUNS (default 3) the runs per figure.
func TestBenchmark(t *testing.T) {
	if os.Getenv("FERRY_BENCH") == "" {
		t.Skip("set FERRY_BENCH=1 (make bench) to run the benchmark")
	}
	testenv.NeedRoot(t)
	scale := envFloat("FERRY_BENCH_SCALE", 1)
	runs := int(envFloat("FERRY_BENCH_RUNS", 3))
	b := newBench(t)

	var rows []benchRow
	// A: fresh 2 GiB of large incompressible files.
	{
		src := b.dir("A-src")
		writeRandomFiles(t, src, 8, int64(256<<20*scale))
		rows = append(rows, b.measure("A fresh 2 GiB large files", src, runs, func(dst string) { clear(t, dst) }))
	}
	// B: 1 % of 1 GiB changed in scattered 64 KiB blocks.
	{
		src, base := b.dir("B-src"), b.dir("B-base")
		size := int64(1 << 30 * scale)
		writeRandomFiles(t, base, 1, size)
		changed := changeBlocks(t, filepath.Join(base, "f0"), filepath.Join(src, "f0"), size/100, 64<<10)
		row := b.measure("B 1% of 1 GiB changed", src, runs, func(dst string) {
			clear(t, dst)
			out, err := exec.Command("cp", "-a", base+"/.", dst).CombinedOutput()
			require.NoError(t, err, string(out))
		})
		row.note = fmt.Sprintf("changed %s", mib(changed))
		rows = append(rows, row)
	}
	// C and D: 100,000 small files in 1,000 directories, no change and fresh.
	{
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
	}
	rss := b.concurrentRSS(20)
	printTable(t, rows, rss)
}

type benchRow struct {
	name    string
	medians map[string]time.Duration
	wire    map[string]int64
	note    string
}

// methods in table order; the ratios are to volsync.
var methods = []string{"ferry", "volsync", "rsync-aes", "ceiling"}

type bench struct {
	t      *testing.T
	root   string
	k      *keyset
	port   int // Ferry endpoint
	dst    string
	sshd   int
	plain  *keyset
	volDst string
	ssh    *volsyncmover.Source
	plainS *volsyncmover.Source
}

func newBench(t *testing.T) *bench {
	b := &bench{t: t, root: t.TempDir(), k: keys(t, "bench"), plain: keys(t, "bench-plain")}
	b.dst = b.dir("ferry-dst")
	var ev events
	_, b.port = serve(t, b.k, b.dst, &ev)
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

// measure runs each method runs times after reset(dst) and keeps medians.
func (b *bench) measure(name, src string, runs int, reset func(dst string)) benchRow {
	row := benchRow{name: name, medians: map[string]time.Duration{}, wire: map[string]int64{}}
	for _, m := range methods {
		var times []time.Duration
		for i := 0; i < runs; i++ {
			dst := b.dst
			if m != "ferry" {
				dst = b.volDst
			}
			reset(dst) // data stays in the page cache, as in the stock measurements
			start := time.Now()
			wire := b.run(m, src)
			times = append(times, time.Since(start))
			row.wire[m] = wire
		}
		sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
		row.medians[m] = times[len(times)/2]
		b.t.Logf("%s / %s: %v (runs %v)", name, m, row.medians[m], times)
	}
	return row
}

// run syncs src with one method and returns rsync's bytes on the wire.
func (b *bench) run(method, src string) int64 {
	t := b.t
	switch method {
	case "ferry":
		res, err := source.Push(context.Background(), source.Options{Address: "127.0.0.1", Port: b.port, Keys: b.k.src, Scratch: t.TempDir(),
			Volume: src, Attempts: 1})
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
		cmd := fmt.Sprintf("tar cf - -C %s . | ssh -c aes128-gcm@openssh.com -i %s -p %d -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -F /dev/null root@127.0.0.1 'cat >/dev/null'",
			src, b.plainS.Identity(), b.sshd)
		mustRun(t, "bash", "-o", "pipefail", "-c", cmd)
		return 0
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
			res, err := source.Push(context.Background(), source.Options{Address: "127.0.0.1", Port: addr.(*net.TCPAddr).Port,
				Keys: k.src, Volume: src, Scratch: t.TempDir(), Attempts: 1})
			require.NoError(t, err, res.Errors)
		}()
	}
	wg.Wait()
	return peakRSS(t)
}

func printTable(t *testing.T, rows []benchRow, rss int64) {
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%-34s %10s %10s %10s %10s   %-12s %-12s %s\n", "case (median)", "ferry", "volsync", "rsync-aes", "ceiling",
		"ferry/volsync", "ferry/ceiling", "wire bytes ferry / volsync")
	for _, r := range rows {
		ratio := func(a, b time.Duration) string {
			if b == 0 {
				return "-"
			}
			return fmt.Sprintf("%.2fx", float64(a)/float64(b))
		}
		fmt.Fprintf(&sb, "%-34s %10s %10s %10s %10s   %-12s %-12s %s / %s %s\n", r.name,
			r.medians["ferry"].Round(10*time.Millisecond), r.medians["volsync"].Round(10*time.Millisecond),
			r.medians["rsync-aes"].Round(10*time.Millisecond), r.medians["ceiling"].Round(10*time.Millisecond),
			ratio(r.medians["ferry"], r.medians["volsync"]), ratio(r.medians["ferry"], r.medians["ceiling"]),
			mib(r.wire["ferry"]), mib(r.wire["volsync"]), r.note)
	}
	fmt.Fprintf(&sb, "peak RSS of the Go process (endpoint and client) with 20 concurrent transfers: %s\n", mib(rss))
	fmt.Print(sb.String())
	t.Log(sb.String())
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

var statsBytes = regexp.MustCompile(`Total bytes (sent|received): ([\d,]+)`)

func wireBytes(out string) int64 {
	var n int64
	for _, m := range statsBytes.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseInt(strings.ReplaceAll(m[2], ",", ""), 10, 64)
		n += v
	}
	return n
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	require.NoError(t, err, "%s %v:\n%s", name, args, out)
	return string(out)
}

func clear(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		require.NoError(t, os.RemoveAll(filepath.Join(dir, e.Name())))
	}
}

func writeRandomFiles(t *testing.T, dir string, n int, size int64) {
	t.Helper()
	rng := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, 1<<20)
	for i := 0; i < n; i++ {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("f%d", i)))
		require.NoError(t, err)
		for left := size; left > 0; left -= int64(len(buf)) {
			_, _ = rng.Read(buf)
			_, err := f.Write(buf[:min(left, int64(len(buf)))])
			require.NoError(t, err)
		}
		require.NoError(t, f.Close())
	}
}

// changeBlocks copies base to dst with total bytes changed in scattered
// blocks and returns the bytes changed.
func changeBlocks(t *testing.T, base, dst string, total, block int64) int64 {
	t.Helper()
	mustRun(t, "cp", "-a", base, dst)
	f, err := os.OpenFile(dst, os.O_WRONLY, 0)
	require.NoError(t, err)
	defer f.Close()
	st, err := f.Stat()
	require.NoError(t, err)
	blocks := st.Size() / block
	rng := rand.New(rand.NewPCG(7, 7))
	buf := make([]byte, block)
	var changed int64
	for changed < total {
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		_, err := f.WriteAt(buf, rng.Int64N(blocks)*block)
		require.NoError(t, err)
		changed += block
	}
	// Written within the second the copy was made, the file would keep an
	// mtime rsync's quick check takes for unchanged (it compares whole
	// seconds here); a real change comes later than that.
	info, err := os.Stat(base)
	require.NoError(t, err)
	require.NoError(t, os.Chtimes(dst, time.Now(), info.ModTime().Add(time.Minute)))
	return changed
}

func writeSmallFiles(t *testing.T, dir string, n, dirs int) {
	t.Helper()
	data := make([]byte, 2048)
	for i := 0; i < dirs; i++ {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, fmt.Sprintf("d%d", i)), 0o755))
	}
	for i := 0; i < n; i++ {
		data[0], data[1] = byte(i), byte(i>>8)
		size := 512 + i%1536
		require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("d%d", i%dirs), fmt.Sprintf("file-%d", i)), data[:size], 0o644))
	}
}

func peakRSS(t *testing.T) int64 {
	raw, err := os.ReadFile("/proc/self/status")
	require.NoError(t, err)
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			kb, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func envFloat(name string, def float64) float64 {
	if v, err := strconv.ParseFloat(os.Getenv(name), 64); err == nil && v > 0 {
		return v
	}
	return def
}
