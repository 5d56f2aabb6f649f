package scale

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

// Doc is the document the scenarios write: FERRY_SCALE_DOC, or the
// repository's docs/scale.md from a test package's directory.
func Doc() string {
	if doc := os.Getenv("FERRY_SCALE_DOC"); doc != "" {
		return doc
	}
	return "../../docs/scale.md"
}

// header opens docs/scale.md; each scenario's section follows it.
const header = `# Scale

Written by ` + "`make scale`" + `: each scenario writes its own section. Everything runs on one machine (2
cores): the control planes, Ferry's controller and agents (or the agent simulator), and the run
itself. The controllers run with their shipped intervals, not the tests' faster ones.

Trigger lag is ` + "`lastSyncStartTime`" + ` minus its scheduled time; requests per sync are the
apiservers' ` + "`apiserver_request_total`" + ` over the window divided by the syncs that started and
completed in it (the measurement's own LISTs taken out); CPU is averaged over the window, memory is
the peak resident size; the agent's figures are the busiest one's.
`

// Section is one scenario's part of the document.
type Section struct {
	// Name marks the section in the file and names its plot
	// (scale-<Name>.png).
	Name string
	// Title and Intro say what the scenario runs.
	Title, Intro string
	// Sides are the clusters' sides in the order their requests per sync
	// are shown.
	Sides []string
	// X labels the plot's x axis.
	X    string
	Rows []Row
	// Profile is the controller's CPU profile at the last level (go tool
	// pprof -top), if taken.
	Profile string
}

// Write replaces sec's section of the document at path (keeping the other
// scenario's) and writes its plot beside it.
func Write(path string, sec Section) error {
	plotName := "scale-" + sec.Name + ".png"
	if err := writePlot(filepath.Join(filepath.Dir(path), plotName), sec); err != nil {
		return err
	}
	begin, end := "<!-- scenario "+sec.Name+" -->\n", "<!-- end "+sec.Name+" -->\n"
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	doc := string(old)
	if !strings.Contains(doc, "<!-- scenario ") {
		doc = header // not written by this: start over
	}
	if i, j := strings.Index(doc, begin), strings.Index(doc, end); i >= 0 && j > i {
		doc = doc[:i] + doc[j+len(end):]
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n## %s\n\n%s\n\nMeasured on %s.\n\n", begin, sec.Title, sec.Intro, time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(&b, "| N | syncs | missed intervals | trigger lag p50 / p99 | sync duration p50 / p99 | API requests per sync (%s) | controller CPU, RSS | agent CPU, RSS | apiservers CPU | etcd CPU |\n",
		strings.Join(sec.Sides, " / "))
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range sec.Rows {
		per := make([]string, len(sec.Sides))
		for i, side := range sec.Sides {
			per[i] = fmt.Sprintf("%.1f", r.PerSync[side])
		}
		agent := "—"
		if mib, ok := r.MiB["agent"]; ok {
			agent = fmt.Sprintf("%.2f cores, %.0f MiB", r.Cores["agent"], mib)
		}
		fmt.Fprintf(&b, "| %d | %d | %.0f | %v / %v | %v / %v | %s | %.2f cores, %.0f MiB | %s | %.2f cores | %.2f cores |\n",
			r.N, r.Syncs, r.Missed, r.LagP50.Round(10*time.Millisecond), r.LagP99.Round(10*time.Millisecond),
			r.DurP50.Round(10*time.Millisecond), r.DurP99.Round(10*time.Millisecond), strings.Join(per, " / "),
			r.Cores["controller"], r.MiB["controller"], agent, r.Cores["kube-apiserver"], r.Cores["etcd"])
	}
	fmt.Fprintf(&b, "\nThe most frequent requests, per sync:\n\n")
	for _, r := range sec.Rows {
		var parts []string
		for _, side := range sec.Sides {
			parts = append(parts, side+": "+strings.Join(r.Top[side], ", "))
		}
		fmt.Fprintf(&b, "- N=%d, %s\n", r.N, strings.Join(parts, "; "))
	}
	if len(sec.Rows) > 0 && sec.Rows[0].SlotString() != "" {
		fmt.Fprintf(&b, "\nWhere a source's transfer slot went (the source agents' histograms over the window):\n\n")
		for _, r := range sec.Rows {
			fmt.Fprintf(&b, "- N=%d: %s\n", r.N, r.SlotString())
		}
	}
	if sec.Profile != "" {
		fmt.Fprintf(&b, "\nThe controller's CPU profile during the last level's window (`go tool pprof -top -cum`):\n\n```\n%s```\n", sec.Profile)
	}
	fmt.Fprintf(&b, "\n![missed intervals, trigger lag, requests per sync and CPU against N](%s)\n%s", plotName, end)
	doc = strings.TrimRight(doc, "\n") + "\n\n" + b.String()
	return os.WriteFile(path, []byte(doc), 0o644)
}

// writePlot draws four panels against N: missed intervals, trigger lag, API
// requests per sync, CPU.
func writePlot(path string, sec Section) error {
	rows := sec.Rows
	series := func(f func(Row) float64) plotter.XYs {
		xy := make(plotter.XYs, len(rows))
		for i, r := range rows {
			xy[i].X, xy[i].Y = float64(r.N), f(r)
		}
		return xy
	}
	perSide := []any{}
	for _, side := range sec.Sides {
		perSide = append(perSide, side, series(func(r Row) float64 { return r.PerSync[side] }))
	}
	cpu := []any{"controller", series(func(r Row) float64 { return r.Cores["controller"] })}
	if _, ok := rows[0].Cores["agent"]; ok {
		cpu = append(cpu, "busiest agent", series(func(r Row) float64 { return r.Cores["agent"] }))
	}
	cpu = append(cpu, "apiservers", series(func(r Row) float64 { return r.Cores["kube-apiserver"] }),
		"etcd", series(func(r Row) float64 { return r.Cores["etcd"] }))
	panels := []struct {
		title, unit string
		lines       []any
	}{
		{"Missed intervals", "intervals", []any{"missed", series(func(r Row) float64 { return r.Missed })}},
		{"Trigger lag", "seconds", []any{
			"p50", series(func(r Row) float64 { return r.LagP50.Seconds() }),
			"p99", series(func(r Row) float64 { return r.LagP99.Seconds() })}},
		{"API requests per sync", "requests", perSide},
		{"CPU", "cores", cpu},
	}
	img := vgimg.New(24*vg.Centimeter, 18*vg.Centimeter)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 2, Cols: 2, PadX: vg.Centimeter, PadY: vg.Centimeter, PadTop: vg.Centimeter / 2,
		PadBottom: vg.Centimeter / 2, PadLeft: vg.Centimeter / 2, PadRight: vg.Centimeter / 2}
	plots := [][]*plot.Plot{make([]*plot.Plot, 2), make([]*plot.Plot, 2)}
	for i, p := range panels {
		pl := plot.New()
		pl.Title.Text, pl.X.Label.Text, pl.Y.Label.Text = p.title, sec.X, p.unit
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
