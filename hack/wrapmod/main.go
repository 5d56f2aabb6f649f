// Command wrapmod writes a tiny Go module that lets `go build` compile
// programs of a module whose own go.mod carries `replace` directives.
//
// `go install mod@version` refuses such modules (k8s.io/kubernetes replaces
// its staging modules with ./staging/..., the CSI sidecars pin forks), so the
// test tool chain is built through a wrapper: a module that requires the
// upstream module and repeats its replace directives. A replace that points at
// a local directory is turned into a replace by the published module of the
// same path, at -local-version (k8s.io/kubernetes v1.X.Y publishes its staging
// modules as v0.X.Y) or, by default, at the upstream version itself.
//
// Usage:
//
//	wrapmod -dir DIR -module MOD -version VER [-local-version V] PKG...
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/mod/modfile"
)

// config is what the flags say.
type config struct {
	dir          string
	module       string
	version      string
	localVersion string
	packages     []string
}

func main() {
	var cfg config
	flag.StringVar(&cfg.dir, "dir", "", "directory to write the wrapper module into")
	flag.StringVar(&cfg.module, "module", "", "upstream module path")
	flag.StringVar(&cfg.version, "version", "", "upstream module version")
	flag.StringVar(&cfg.localVersion, "local-version", "", "version for replaces that point at a local directory (default: -version)")
	flag.Parse()
	cfg.packages = flag.Args()
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "wrapmod:", err)
		os.Exit(1)
	}
}

func run(cfg config) error {
	if cfg.dir == "" || cfg.module == "" || cfg.version == "" || len(cfg.packages) == 0 {
		return errors.New("usage: wrapmod -dir DIR -module MOD -version VER [-local-version V] PKG")
	}
	if cfg.localVersion == "" {
		cfg.localVersion = cfg.version
	}
	upstream, err := downloadGoMod(cfg.module, cfg.version)
	if err != nil {
		return err
	}
	wrapper, err := wrapperGoMod(upstream, cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", cfg.dir, err)
	}
	if err := os.WriteFile(filepath.Join(cfg.dir, "go.mod"), wrapper, 0o644); err != nil {
		return fmt.Errorf("write go.mod: %w", err)
	}
	if err := os.WriteFile(filepath.Join(cfg.dir, "tools.go"), toolsFile(cfg.packages), 0o644); err != nil {
		return fmt.Errorf("write tools.go: %w", err)
	}
	tidy := exec.Command("go", "mod", "tidy")
	tidy.Dir, tidy.Stdout, tidy.Stderr = cfg.dir, os.Stderr, os.Stderr
	if err := tidy.Run(); err != nil {
		return fmt.Errorf("go mod tidy in %s: %w", cfg.dir, err)
	}
	return nil
}

// downloadGoMod fetches the upstream go.mod through the module proxy.
func downloadGoMod(module, version string) (*modfile.File, error) {
	out, err := exec.Command("go", "mod", "download", "-json", module+"@"+version).Output()
	if err != nil {
		return nil, fmt.Errorf("go mod download %s@%s: %w", module, version, err)
	}
	var info struct{ GoMod string }
	if err := json.Unmarshal(out, &info); err != nil {
		return nil, fmt.Errorf("parse go mod download output: %w", err)
	}
	data, err := os.ReadFile(info.GoMod)
	if err != nil {
		return nil, fmt.Errorf("read upstream go.mod: %w", err)
	}
	f, err := modfile.Parse(info.GoMod, data, nil)
	if err != nil {
		return nil, fmt.Errorf("parse upstream go.mod: %w", err)
	}
	return f, nil
}

// wrapperGoMod builds the wrapper's go.mod from the upstream one.
func wrapperGoMod(upstream *modfile.File, cfg config) ([]byte, error) {
	w := &modfile.File{}
	if err := w.AddModuleStmt("wrapper"); err != nil {
		return nil, err
	}
	if upstream.Go != nil {
		if err := w.AddGoStmt(upstream.Go.Version); err != nil {
			return nil, err
		}
	}
	if err := w.AddRequire(cfg.module, cfg.version); err != nil {
		return nil, err
	}
	for _, r := range upstream.Replace {
		newPath, newVersion := r.New.Path, r.New.Version
		if strings.Contains(newPath, "FORBIDDEN") { // etcd's guard against importing internal modules
			continue
		}
		if modfile.IsDirectoryPath(newPath) {
			newPath, newVersion = r.Old.Path, cfg.localVersion
		}
		if err := w.AddReplace(r.Old.Path, r.Old.Version, newPath, newVersion); err != nil {
			return nil, fmt.Errorf("replace %s: %w", r.Old.Path, err)
		}
	}
	w.Cleanup()
	return w.Format()
}

// toolsFile imports the packages to build so that `go mod tidy` keeps them.
func toolsFile(pkgs []string) []byte {
	var b strings.Builder
	b.WriteString("//go:build tools\n\npackage tools\n\nimport (\n")
	for _, p := range pkgs {
		fmt.Fprintf(&b, "\t_ %q\n", p)
	}
	b.WriteString(")\n")
	return []byte(b.String())
}
