package controller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/ferrysync/ferry/internal/testenv"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
)

// TestAlertRules checks deploy/monitoring's rule file with the real
// promtool: it parses, and each alert fires when its series say so and
// clears after (alerts_test.yaml, on synthetic series).
func TestAlertRules(t *testing.T) {
	if testing.Short() {
		t.Skip("needs promtool, which make test builds")
	}
	promtool := tool(t, "PROMTOOL")
	dir := monitoringDir(t)
	for _, args := range [][]string{{"check", "rules", "alerts.yaml"}, {"test", "rules", "alerts_test.yaml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "promtool %s:\n%s", strings.Join(args, " "), out)
	}
}

// monitoring runs a real Prometheus that scrapes the controller and the
// agents of the cluster, with deploy/monitoring's rules (their hold times
// cut to seconds), while a pair syncs in full, unchanged and narrowed.
// Then the destination is unreachable: the source's syncs fail,
// FerryVolumeOutOfSync fires for it, and clears once a sync succeeds
// again. After all that, every query of the dashboard returns series.
func monitoring(e *env) {
	t := e.t
	prom := startPrometheus(t, e)
	e.app("mon", "1")
	e.pair("mon", volsyncv1alpha1.CopyMethodSnapshot, &volsyncv1alpha1.TriggerSpec{Manual: "1"})
	e.synced("mon", "rs", "1")
	e.trigger("mon", "rs", "2") // unchanged: skipped
	e.onVolume("mon", "data", false, func(dir string) { writeApp(t, dir, "2") })
	e.trigger("mon", "rs", "3") // a small change: narrowed

	// The destination unreachable: the source points at a port where
	// nothing listens (refused at once, as a destination whose node is
	// gone is after a while).
	rd := e.rd("mon", "rd")
	setAddress := func(addr *string, port *int32, manual string) {
		require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
			rs := e.rs("mon", "rs")
			rs.Spec.Rsync.Address, rs.Spec.Rsync.Port, rs.Spec.Trigger.Manual = addr, port, manual
			return e.k.Update(context.Background(), rs)
		}))
	}
	setAddress(ptr.To(e.c.Nodes[0].Net.IP), ptr.To(int32(1)), "unreachable")
	alert := map[string]string{"alertname": "FerryVolumeOutOfSync", "obj_namespace": "mon", "obj_name": "rs", "role": "source"}
	testenv.Eventually(t, "FerryVolumeOutOfSync to fire for the source", 3*time.Minute, func() bool { return prom.alert(t, alert) == "firing" })
	setAddress(rd.Status.Rsync.Address, rd.Status.Rsync.Port, "reachable")
	e.synced("mon", "rs", "reachable")
	testenv.Eventually(t, "FerryVolumeOutOfSync to clear", time.Minute, func() bool { return prom.alert(t, alert) == "" })

	// After syncs in full, unchanged, narrowed and failed: every panel has
	// data.
	for _, q := range dashboardQueries(t) {
		testenv.Eventually(t, "series for the dashboard's "+q, time.Minute, func() bool { return len(prom.query(t, q)) > 0 })
	}
}

// prometheus is a running Prometheus's HTTP API.
type prometheus struct{ url string }

// startPrometheus runs Prometheus scraping e's controller and agents every
// second, with deploy/monitoring's alerts evaluated every second and held
// for seconds instead of minutes; it stops when the test ends.
func startPrometheus(t testing.TB, e *env) *prometheus {
	bin := tool(t, "PROMETHEUS")
	dir := t.TempDir()
	rules, err := os.ReadFile(filepath.Join(monitoringDir(t), "alerts.yaml"))
	require.NoError(t, err)
	fast := strings.NewReplacer("for: 10m", "for: 2s", "for: 5m", "for: 2s").Replace(string(rules))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "alerts.yaml"), []byte(fast), 0o644))
	hostOf := func(metrics string) string {
		u, err := url.Parse(metrics)
		require.NoError(t, err)
		return u.Host
	}
	var agents []string
	for _, a := range e.agents {
		agents = append(agents, fmt.Sprintf("%q", hostOf(a.Metrics)))
	}
	config := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [alerts.yaml]
scrape_configs:
  - job_name: ferry-controller
    static_configs: [{targets: [%q]}]
  - job_name: ferry-nodeagent
    static_configs: [{targets: [%s]}]
`, hostOf(e.ctrl.Metrics), strings.Join(agents, ", "))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(config), 0o644))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	cmd := exec.Command(bin, "--config.file=prometheus.yml", "--storage.tsdb.path=data", "--web.listen-address="+addr)
	cmd.Dir = dir
	logs, err := os.Create(filepath.Join(dir, "prometheus.log"))
	require.NoError(t, err)
	cmd.Stdout, cmd.Stderr = logs, logs
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			out, _ := os.ReadFile(filepath.Join(dir, "prometheus.log"))
			t.Logf("prometheus:\n%s", out)
		}
	})
	p := &prometheus{url: "http://" + addr}
	testenv.Eventually(t, "Prometheus to be ready", time.Minute, func() bool {
		res, err := http.Get(p.url + "/-/ready")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
	return p
}

// query runs an instant query and returns its series' labels.
func (p *prometheus) query(t testing.TB, q string) []map[string]string {
	var body struct {
		Status string
		Error  string
		Data   struct {
			Result []struct{ Metric map[string]string }
		}
	}
	p.get(t, "/api/v1/query?query="+url.QueryEscape(q), &body)
	require.Equal(t, "success", body.Status, "query %s: %s", q, body.Error)
	var out []map[string]string
	for _, r := range body.Data.Result {
		out = append(out, r.Metric)
	}
	return out
}

// alert is the state ("pending", "firing") of the alert whose labels
// include want; "" when there is none.
func (p *prometheus) alert(t testing.TB, want map[string]string) string {
	var body struct {
		Data struct {
			Alerts []struct {
				Labels map[string]string
				State  string
			}
		}
	}
	p.get(t, "/api/v1/alerts", &body)
	for _, a := range body.Data.Alerts {
		match := true
		for k, v := range want {
			match = match && a.Labels[k] == v
		}
		if match {
			return a.State
		}
	}
	return ""
}

func (p *prometheus) get(t testing.TB, path string, into any) {
	res, err := http.Get(p.url + path)
	require.NoError(t, err)
	defer res.Body.Close()
	require.NoError(t, json.NewDecoder(res.Body).Decode(into), path)
}

// dashboardQueries are the expressions of deploy/monitoring's dashboard.
func dashboardQueries(t testing.TB) []string {
	raw, err := os.ReadFile(filepath.Join(monitoringDir(t), "dashboard.json"))
	require.NoError(t, err)
	var d struct {
		Panels []struct {
			Targets []struct{ Expr string }
		}
	}
	require.NoError(t, json.Unmarshal(raw, &d))
	var out []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			out = append(out, tg.Expr)
		}
	}
	require.NotEmpty(t, out)
	return out
}

// monitoringDir is deploy/monitoring in the checkout.
func monitoringDir(t testing.TB) string {
	root, err := testenv.RepoRoot()
	require.NoError(t, err)
	return filepath.Join(root, "deploy", "monitoring")
}

// tool is the path in environment variable name (make test sets it to the
// binary it built at a pinned version).
func tool(t testing.TB, name string) string {
	path := os.Getenv(name)
	require.NotEmpty(t, path, "%s is not set: run make test, which builds it into bin/", name)
	return path
}
