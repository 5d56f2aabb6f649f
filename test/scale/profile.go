package scale

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Profile takes a CPU profile of length d from a Go process's
// /debug/pprof at addr and returns its top functions by cumulative time
// (go tool pprof -top), the profile itself kept in dir.
func Profile(ctx context.Context, addr, dir string, d time.Duration) (string, error) {
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, int(d.Seconds()))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", fmt.Errorf("profile: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("profile: %w", err)
	}
	defer resp.Body.Close()
	path := filepath.Join(dir, fmt.Sprintf("controller-%d.pprof", time.Now().Unix()))
	f, err := os.Create(path)
	if err != nil {
		return "", fmt.Errorf("profile: %w", err)
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return "", fmt.Errorf("profile: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("profile: %w", err)
	}
	out, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-cum", "-nodecount=25", path).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go tool pprof: %w: %s", err, out)
	}
	return string(out), nil
}
