// Command ociimage builds a container image from its Dockerfile without a
// container engine or a registry, so the local clusters run the images a
// user builds with Docker: the final stage's debian:bookworm-slim becomes a
// root filesystem made by mmdebstrap from Debian's packages (bookworm and
// bookworm-security) with the packages its apt-get install names and its
// other RUN commands run inside; its COPY --from=build files come from the
// -bin directory (what the build stage's go build makes); USER and
// ENTRYPOINT are kept. It writes an image archive that `ctr images import`
// loads into a node's containerd.
//
// Usage:
//
//	ociimage -dockerfile FILE -bin DIR -cache DIR -tag NAME:TAG -o OUT.tar
package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// config is what the flags say.
type config struct {
	dockerfile, bin, cache, tag, out, mirror string
}

func main() {
	var c config
	flag.StringVar(&c.dockerfile, "dockerfile", "", "the image's Dockerfile")
	flag.StringVar(&c.bin, "bin", "", "directory holding the build stage's outputs (its /out)")
	flag.StringVar(&c.cache, "cache", "", "directory for root filesystems, reused while the packages and commands are the same")
	flag.StringVar(&c.tag, "tag", "", "image name and tag, e.g. ghcr.io/ferrysync/ferry-nodeagent:dev")
	flag.StringVar(&c.out, "o", "", "image archive to write")
	flag.StringVar(&c.mirror, "mirror", "http://deb.debian.org", "Debian mirror (debian and debian-security under it)")
	flag.Parse()
	if err := build(c); err != nil {
		fmt.Fprintln(os.Stderr, "ociimage:", err)
		os.Exit(1)
	}
}

func build(c config) error {
	if c.dockerfile == "" || c.tag == "" || c.out == "" || c.cache == "" {
		return errors.New("-dockerfile, -cache, -tag and -o are required")
	}
	ref, err := name.NewTag(c.tag)
	if err != nil {
		return fmt.Errorf("tag %q: %w", c.tag, err)
	}
	r, err := readRecipe(c.dockerfile)
	if err != nil {
		return err
	}
	var layers []v1.Layer
	if r.Base != "scratch" {
		rootfs, err := rootFS(c, r)
		if err != nil {
			return err
		}
		l, err := tarball.LayerFromFile(rootfs)
		if err != nil {
			return fmt.Errorf("base layer %s: %w", rootfs, err)
		}
		layers = append(layers, l)
	}
	if len(r.Copies) > 0 {
		data, err := filesLayer(c.bin, r.Copies)
		if err != nil {
			return err
		}
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
		if err != nil {
			return fmt.Errorf("files layer: %w", err)
		}
		layers = append(layers, l)
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return fmt.Errorf("layers: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.User = r.User
	cf.Config.Entrypoint = r.Entrypoint
	if r.Base != "scratch" {
		cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := tarball.WriteToFile(c.out, ref, img); err != nil {
		return fmt.Errorf("write %s: %w", c.out, err)
	}
	return nil
}

// rootFS returns a root filesystem tarball with the recipe's packages and
// commands, made by mmdebstrap once per distinct recipe.
func rootFS(c config, r recipe) (string, error) {
	h := sha256.Sum256([]byte(strings.Join(r.Packages, ",") + "\n" + strings.Join(r.Commands, "\n")))
	out := filepath.Join(c.cache, "rootfs-"+hex.EncodeToString(h[:6])+".tar")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(c.cache, 0o755); err != nil {
		return "", fmt.Errorf("rootfs cache: %w", err)
	}
	tmp := strings.TrimSuffix(out, ".tar") + ".partial.tar"
	args := []string{"--quiet", "--format=tar", "--variant=minbase", "--include=" + strings.Join(r.Packages, ",")}
	for _, cmd := range r.Commands {
		args = append(args, "--customize-hook=chroot \"$1\" sh -ec "+shellQuote(cmd))
	}
	args = append(args, "bookworm", tmp,
		"deb "+c.mirror+"/debian bookworm main",
		"deb "+c.mirror+"/debian-security bookworm-security main")
	cmd := exec.Command("mmdebstrap", args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("mmdebstrap %s: %w", strings.Join(r.Packages, " "), err)
	}
	if err := os.Rename(tmp, out); err != nil {
		return "", fmt.Errorf("rootfs: %w", err)
	}
	return out, nil
}

// shellQuote quotes s for sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// filesLayer is a layer tarball of the build outputs the COPY steps name,
// with their parent directories, executable, owned by root and dated at the
// epoch so the same binaries give the same layer.
func filesLayer(bin string, copies []copyStep) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, c := range copies {
		for src, dst := range c.destinations() {
			if err := addFile(tw, dirs, filepath.Join(bin, src), dst); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return buf.Bytes(), nil
}

// addFile writes the file src to the layer at dst.
func addFile(tw *tar.Writer, dirs map[string]bool, src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("build output: %w", err)
	}
	dst = strings.TrimPrefix(path.Clean("/"+dst), "/")
	if err := writeParents(tw, dst, dirs); err != nil {
		return err
	}
	hdr := &tar.Header{Name: dst, Mode: 0o755, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	if _, err := tw.Write(data); err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	return nil
}

// writeParents writes the directories above dst that are not yet in the
// layer, outermost first.
func writeParents(tw *tar.Writer, dst string, written map[string]bool) error {
	var missing []string
	for d := path.Dir(dst); d != "." && d != "/" && !written[d]; d = path.Dir(d) {
		missing = append([]string{d}, missing...)
	}
	for _, d := range missing {
		written[d] = true
		hdr := &tar.Header{Name: d + "/", Mode: 0o755, Typeflag: tar.TypeDir, ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("layer: %w", err)
		}
	}
	return nil
}
