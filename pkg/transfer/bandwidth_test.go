package transfer_test

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
	"github.com/ferrysync/ferry/pkg/transfer/sender"
	"github.com/ferrysync/ferry/pkg/transfer/stream"
)

// bwLimit is the rate the bandwidth tests ask for: 2 MiB/s, so that a
// file of bwFile (8 MiB) takes about four seconds.
const bwLimit, bwFile = 2 << 20, 8 << 20

// TestBandwidthLimit: a source's own limit, and a node's cap shared by two
// transfers at once, hold within 10 %, measured where the bytes arrive
// (what the destinations' receivers read from their channels, from the
// first one's start to the last one's end). The data is random, so
// compression does not change what is on the wire.
func TestBandwidthLimit(t *testing.T) {
	testenv.NeedRoot(t)
	src := t.TempDir()
	data := make([]byte, bwFile)
	_, _ = rand.Read(data)
	require.NoError(t, os.WriteFile(filepath.Join(src, "random"), data, 0o644))

	t.Run("one source's limit", func(t *testing.T) {
		rate := limitedRate(t, src, 1, func(o *sender.Options) { o.BandwidthLimit = bwLimit })
		assert.InEpsilon(t, float64(bwLimit), rate, 0.10, "%.0f bytes/s against a limit of %d", rate, bwLimit)
	})
	t.Run("a node's cap, shared by two transfers", func(t *testing.T) {
		node := stream.NewLimiter(bwLimit)
		rate := limitedRate(t, src, 2, func(o *sender.Options) { o.NodeBandwidth = node })
		assert.InEpsilon(t, float64(bwLimit), rate, 0.10, "%.0f bytes/s together against a cap of %d", rate, bwLimit)
	})
}

// limitedRate pushes src to n destinations at once, each with opts, and
// returns the bytes per second the destinations received together.
func limitedRate(t *testing.T, src string, n int, opts func(*sender.Options)) float64 {
	t.Helper()
	evs := make([]*events, n)
	ports := make([]int, n)
	ks := make([]*keyset, n)
	for i := range n {
		evs[i], ks[i] = &events{}, keys(t, "bandwidth")
		_, ports[i] = serve(t, ks[i], t.TempDir(), evs[i])
	}
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			res, err := push(t, ks[i].src, ports[i], src, opts)
			assert.NoError(t, err, res.Errors)
		})
	}
	wg.Wait()
	var received int64
	var first, last time.Time
	for _, ev := range evs {
		start, end := ev.waitFor(t, endpoint.RsyncStarted), ev.waitFor(t, endpoint.RsyncEnded)
		require.Zero(t, end.ExitCode)
		received += end.BytesReceived
		if first.IsZero() || start.Time.Before(first) {
			first = start.Time
		}
		if end.Time.After(last) {
			last = end.Time
		}
	}
	require.Greater(t, received, int64(n*bwFile), "every byte of the file went over the wire")
	t.Logf("%d transfer(s): %d bytes in %v", n, received, last.Sub(first))
	return float64(received) / last.Sub(first).Seconds()
}
