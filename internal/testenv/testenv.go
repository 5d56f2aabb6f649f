// Package testenv holds what Ferry's tests share: the root check that makes
// a test that needs root fail (never skip) outside -short mode, polling with
// a deadline, process and loop-device leak checks.
//
// It is kept light on purpose: test binaries re-execute themselves as
// helpers inside rsync's confinement (a read-only root with no /tmp), so
// nothing here may do work at package initialisation. The real
// kube-apiserver lives in package apiserver below.
package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// RepoRoot finds the module root (the directory with go.mod) above the
// working directory, which go test sets to the package's directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("working directory: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// NeedRoot skips t in -short mode (make test-unit) and fails it when not
// running as root otherwise: tests that mount, enter namespaces or set
// owners must run, never pass by not running.
func NeedRoot(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs root (mounts, namespaces, owners); runs in make test")
	}
	if os.Geteuid() != 0 {
		t.Fatal("needs root (mounts, namespaces, owners): run make test as root, or make test-unit for the tests that need neither root nor a cluster")
	}
}

// Processes lists the command lines of running processes that contain
// every one of parts, read from /proc (no tool that may be missing): leak
// checks assert on it.
func Processes(t testing.TB, parts ...string) []string {
	t.Helper()
	dirs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		t.Fatalf("list /proc: %v", err)
	}
	var out []string
	for _, d := range dirs {
		raw, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || len(raw) == 0 {
			continue // gone meanwhile, or a kernel thread
		}
		cmd := strings.TrimSpace(strings.ReplaceAll(string(raw), "\x00", " "))
		match := true
		for _, p := range parts {
			match = match && strings.Contains(cmd, p)
		}
		if match && filepath.Base(d) != strconv.Itoa(os.Getpid()) {
			out = append(out, cmd)
		}
	}
	return out
}

// Fataler is what Eventually needs of a test: *testing.T, or a program
// that plays one (the demo).
type Fataler interface {
	Helper()
	Fatal(args ...any)
}

// Eventually polls cond until it holds, failing the test when the deadline
// passes first: integration tests wait for outcomes this way, never by
// sleeping, and through this one helper. detail, when given, says what was
// last seen, for the failure message.
func Eventually(t Fataler, what string, timeout time.Duration, cond func() bool, detail ...func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("timed out after %v waiting for %s", timeout, what)
			for _, d := range detail {
				msg += "\n" + d()
			}
			t.Fatal(msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// NoLoopDevices waits until no loop device is backed by a file under dir,
// and fails the test with the listing if one stays. It waits because the
// kernel frees a detached loop device asynchronously, once its last user
// has let go: a moment after losetup -d returns, the device may still be
// listed.
func NoLoopDevices(t *testing.T, dir string) {
	t.Helper()
	var out []byte
	Eventually(t, "no loop device backed by a file under "+dir, 10*time.Second, func() bool {
		var err error
		if out, err = exec.Command("losetup", "-a").CombinedOutput(); err != nil {
			t.Fatalf("losetup -a: %v: %s", err, out)
		}
		return !strings.Contains(string(out), dir)
	}, func() string { return string(out) })
}

// EnvFloat reads a positive number from environment variable name (a
// benchmark's or a fuzz run's size), def when it is unset or not one.
func EnvFloat(name string, def float64) float64 {
	if v, err := strconv.ParseFloat(os.Getenv(name), 64); err == nil && v > 0 {
		return v
	}
	return def
}
