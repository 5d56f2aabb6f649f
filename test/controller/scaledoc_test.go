package controller_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// scalePlot is the real-agents scenario's plot, beside the document.
const scalePlot = "scale-real-agents.png"

// writeScaleDoc writes the scale run's table and plot: path (a Markdown
// file) and scalePlot in its directory.
func writeScaleDoc(path string, minutes int, rows []scaleRow) error {
	if err := writeScalePlot(filepath.Join(filepath.Dir(path), scalePlot), rows); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, `# Scale

Written by `+"`make scale`"+` (test/controller's BenchmarkScale) on %s. Real agents: a source cluster
and a destination cluster of two nodes each, one machine (2 cores) running both control planes,
all agents and the controllers, which run with their shipped intervals (not the tests' faster
ones). N ReplicationSources on `+"`*/1`"+`, half Direct and half Clone,
into Direct destinations; the volumes do not change between syncs (each sync finds its tree
unchanged). Each level adds pairs to the one before, waits until every new source has synced,
then measures %d minutes from a minute's start.

Trigger lag is `+"`lastSyncStartTime`"+` minus its scheduled minute; requests per sync are the
apiserver's `+"`apiserver_request_total`"+` over the window divided by the syncs that started and
completed in it (the measurement's own LISTs taken out); CPU is averaged over the window, memory
is the peak resident size; the agent's figures are the busiest one's.

| N | syncs | missed intervals | trigger lag p50 / p99 | sync duration p50 / p99 | API requests per sync (source / destination cluster) | controller CPU, RSS | agent CPU, RSS | apiservers CPU | etcd CPU |
|---|---|---|---|---|---|---|---|---|---|
`, time.Now().UTC().Format("2006-01-02"), minutes)
	for _, r := range rows {
		fmt.Fprintf(&b, "| %d | %d | %.0f | %v / %v | %v / %v | %.1f / %.1f | %.2f cores, %.0f MiB | %.2f cores, %.0f MiB | %.2f cores | %.2f cores |\n",
			r.n, r.syncs, r.missed, r.lagP50.Round(10*time.Millisecond), r.lagP99.Round(10*time.Millisecond),
			r.durP50.Round(10*time.Millisecond), r.durP99.Round(10*time.Millisecond), r.perSync["source"], r.perSync["destination"],
			r.cores["controller"], r.mib["controller"], r.cores["agent"], r.mib["agent"], r.cores["kube-apiserver"], r.cores["etcd"])
	}
	fmt.Fprintf(&b, "\nThe most frequent requests, per sync:\n\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "- N=%d, source cluster: %s; destination cluster: %s\n", r.n,
			strings.Join(r.top["source"], ", "), strings.Join(r.top["destination"], ", "))
	}
	fmt.Fprintf(&b, "\n![missed intervals, trigger lag, requests per sync and CPU against N](%s)\n", scalePlot)
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// writeScalePlot draws four panels against N: missed intervals, trigger
// lag, API requests per sync, CPU.
func writeScalePlot(path string, rows []scaleRow) error {
	series := func(f func(scaleRow) float64) plotter.XYs {
		xy := make(plotter.XYs, len(rows))
		for i, r := range rows {
			xy[i].X, xy[i].Y = float64(r.n), f(r)
		}
		return xy
	}
	panels := []struct {
		title, unit string
		lines       []any
	}{
		{"Missed intervals", "intervals", []any{"missed", series(func(r scaleRow) float64 { return r.missed })}},
		{"Trigger lag", "seconds", []any{
			"p50", series(func(r scaleRow) float64 { return r.lagP50.Seconds() }),
			"p99", series(func(r scaleRow) float64 { return r.lagP99.Seconds() })}},
		{"API requests per sync", "requests", []any{
			"source cluster", series(func(r scaleRow) float64 { return r.perSync["source"] }),
			"destination cluster", series(func(r scaleRow) float64 { return r.perSync["destination"] })}},
		{"CPU", "cores", []any{
			"controller", series(func(r scaleRow) float64 { return r.cores["controller"] }),
			"busiest agent", series(func(r scaleRow) float64 { return r.cores["agent"] }),
			"apiservers", series(func(r scaleRow) float64 { return r.cores["kube-apiserver"] }),
			"etcd", series(func(r scaleRow) float64 { return r.cores["etcd"] })}},
	}
	img := vgimg.New(24*vg.Centimeter, 18*vg.Centimeter)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 2, Cols: 2, PadX: vg.Centimeter, PadY: vg.Centimeter, PadTop: vg.Centimeter / 2,
		PadBottom: vg.Centimeter / 2, PadLeft: vg.Centimeter / 2, PadRight: vg.Centimeter / 2}
	plots := [][]*plot.Plot{make([]*plot.Plot, 2), make([]*plot.Plot, 2)}
	for i, p := range panels {
		pl := plot.New()
		pl.Title.Text, pl.X.Label.Text, pl.Y.Label.Text = p.title, "ReplicationSources on */1", p.unit
		pl.Y.Min = 0
		if err := plotutil.AddLinePoints(pl, p.lines...); err != nil {
			return fmt.Errorf("plot %s: %w", p.title, err)
		}
		plots[i/2][i%2] = pl
	}
	canvases := plot.Align(plots, tiles, dc)
	for i := range plots {
		for j := range plots[i] {
			plots[i][j].Draw(canvases[i][j])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("plot: %w", err)
	}
	return f.Close()
}
