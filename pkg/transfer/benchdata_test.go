package transfer_test

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func wireBytes(out string) int64 {
	var n int64
	for _, m := range statsBytes.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseInt(strings.ReplaceAll(m[2], ",", ""), 10, 64)
		n += v
	}
	return n
}

func mustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	require.NoError(t, err, "%s %v:\n%s", name, args, out)
	return string(out)
}

func clear(t testing.TB, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		require.NoError(t, os.RemoveAll(filepath.Join(dir, e.Name())))
	}
}

func writeRandomFiles(t testing.TB, dir string, n int, size int64) {
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
func changeBlocks(t testing.TB, path string, total, block int64, round int) int64 {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	defer f.Close()
	st, err := f.Stat()
	require.NoError(t, err)
	blocks := st.Size() / block
	// Seeded by the file's name and the round: files changed alike would
	// let a compressor with a long window send one file's change for all.
	h := fnv.New64a()
	_, _ = h.Write([]byte(filepath.Base(path)))
	rng := rand.New(rand.NewPCG(uint64(round), h.Sum64()))
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
	// A later mtime than the last sync saw, whole seconds apart (rsync's
	// quick check compares whole seconds here).
	later := st.ModTime().Add(time.Minute)
	require.NoError(t, os.Chtimes(path, later, later))
	return changed
}

func writeSmallFiles(t testing.TB, dir string, n, dirs int) {
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

func peakRSS(t testing.TB) int64 {
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

// changeFiles rewrites n of the small files (spread over dirs directories)
// with new content (round makes it new each time) and a later mtime.
func changeFiles(t testing.TB, dir string, n, dirs, round int) {
	t.Helper()
	later := time.Now().Add(time.Hour)
	for i := 0; i < n; i++ {
		j := i * 100 // every hundredth file
		p := filepath.Join(dir, fmt.Sprintf("d%d", j%dirs), fmt.Sprintf("file-%d", j))
		require.NoError(t, os.WriteFile(p, []byte(fmt.Sprintf("changed %d in round %d\n", j, round)), 0o644))
		require.NoError(t, os.Chtimes(p, later, later))
	}
}

// writeLogs writes size bytes of application log lines, as varied as a
// service's access log.
func writeLogs(t testing.TB, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	require.NoError(t, err)
	rng := rand.New(rand.NewPCG(3, 3))
	levels := []string{"INFO", "INFO", "INFO", "WARN", "DEBUG", "ERROR"}
	routes := []string{"/api/v1/users", "/api/v1/orders", "/healthz", "/metrics", "/api/v1/items/"}
	statuses := []int{200, 200, 200, 201, 404, 500}
	ts := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	var buf strings.Builder
	for written := int64(0); written < size; {
		buf.Reset()
		for i := 0; i < 1000; i++ {
			ts = ts.Add(time.Duration(rng.IntN(10_000)) * time.Microsecond)
			route := routes[rng.IntN(len(routes))]
			if strings.HasSuffix(route, "/") {
				route += strconv.Itoa(rng.IntN(100000))
			}
			fmt.Fprintf(&buf, "%s %s [req-%08x] GET %s status=%d duration_ms=%.2f user=%d bytes=%d\n", ts.Format(time.RFC3339Nano),
				levels[rng.IntN(len(levels))], rng.Uint32(), route, statuses[rng.IntN(len(statuses))], rng.Float64()*300,
				rng.IntN(5000), rng.IntN(100000))
		}
		n, err := f.WriteString(buf.String())
		require.NoError(t, err)
		written += int64(n)
	}
	require.NoError(t, f.Close())
}
