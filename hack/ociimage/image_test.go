package main

import (
	"archive/tar"
	"errors"
	"io"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ferrysync/ferry/internal/testenv"
)

// TestBuiltImagesMatchDockerfiles: the images make images built (and the
// local clusters run) are what their Dockerfiles say: the entrypoint and
// user, every COPY'd binary executable where the Dockerfile puts it, every
// package the Dockerfile installs installed, and rsync 3.5.0 or later in the
// node agent's.
func TestBuiltImagesMatchDockerfiles(t *testing.T) {
	if testing.Short() {
		t.Skip("reads the images make images builds; runs in make test")
	}
	root, err := testenv.RepoRoot()
	require.NoError(t, err)
	for dockerfile, archive := range map[string]string{
		"Dockerfile.controller": "ferry-controller.tar", "Dockerfile.nodeagent": "ferry-nodeagent.tar",
		"test/images/csidriver/Dockerfile": "ferry-test-csidriver.tar", "test/images/app/Dockerfile": "ferry-test-app.tar",
	} {
		t.Run(dockerfile, func(t *testing.T) {
			r, err := readRecipe(filepath.Join(root, dockerfile))
			require.NoError(t, err)
			img, err := tarball.ImageFromPath(filepath.Join(root, "bin", "images", archive), nil)
			require.NoError(t, err, "run make images")
			cf, err := img.ConfigFile()
			require.NoError(t, err)
			assert.Equal(t, r.Entrypoint, cf.Config.Entrypoint, "entrypoint")
			assert.Equal(t, r.User, cf.Config.User, "user")

			files, status := contents(t, mutate.Extract(img))
			for _, c := range r.Copies {
				for _, dst := range c.destinations() {
					mode, ok := files[strings.TrimPrefix(dst, "/")]
					if assert.True(t, ok, "%s in the image", dst) {
						assert.NotZero(t, mode&0o111, "%s executable", dst)
					}
				}
			}
			installed := installedPackages(status)
			for _, p := range r.Packages {
				assert.Contains(t, installed, p, "package installed")
			}
			if v, ok := installed["rsync"]; ok || dockerfile == "Dockerfile.nodeagent" {
				assert.True(t, atLeast(v, 3, 5), "rsync %q is 3.5.0 or later", v)
			}
		})
	}
}

// contents lists an image's files with their modes and returns dpkg's
// status file.
func contents(t *testing.T, rc io.ReadCloser) (map[string]int64, string) {
	defer rc.Close()
	files := map[string]int64{}
	var status string
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, status
		}
		require.NoError(t, err)
		name := strings.TrimPrefix(filepath.Clean(h.Name), "./")
		files[name] = h.Mode
		if name == "var/lib/dpkg/status" {
			b, err := io.ReadAll(tr)
			require.NoError(t, err)
			status = string(b)
		}
	}
}

// installedPackages maps the installed packages in a dpkg status file to
// their versions.
func installedPackages(status string) map[string]string {
	out := map[string]string{}
	for _, para := range strings.Split(status, "\n\n") {
		fields := map[string]string{}
		for _, line := range strings.Split(para, "\n") {
			if k, v, ok := strings.Cut(line, ": "); ok {
				fields[k] = v
			}
		}
		if fields["Status"] == "install ok installed" {
			out[fields["Package"]] = fields["Version"]
		}
	}
	return out
}

var versionRE = regexp.MustCompile(`^(?:\d+:)?(\d+)\.(\d+)`)

// atLeast says whether a Debian version is major.minor or later.
func atLeast(version string, major, minor int) bool {
	m := versionRE.FindStringSubmatch(version)
	if m == nil {
		return false
	}
	a, _ := strconv.Atoi(m[1])
	b, _ := strconv.Atoi(m[2])
	return a > major || (a == major && b >= minor)
}
