// Package fstree builds file trees with every kind of metadata rsync must
// keep, and compares two trees by what a user of a replica cares about:
// content, type, mode, owner, ACLs, hard-link groups, mtimes, symlink targets
// and sparseness. It serves the data plane's fidelity tests and the end-to-end tests.
package fstree

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Entry is what is compared of one path.
type Entry struct {
	Type    string // file, dir, symlink, fifo, char, block, socket
	Mode    uint32 // permission and setuid/setgid/sticky bits
	UID     uint32
	GID     uint32
	Size    int64
	SHA256  string
	Target  string // symlink target
	MTimeNS int64  // not for symlinks; whole seconds for directories and specials
	ACL     string // system.posix_acl_access, hex
	Default string // system.posix_acl_default, hex
	Links   uint64
	// LinkGroup names the first path (sorted) of the entry's hard-link
	// group, so groups compare across trees.
	LinkGroup string
	// Allocated is the bytes the file occupies on disk.
	Allocated int64
	Rdev      uint64
}

// Snapshot reads every path under root (root itself as ".").
func Snapshot(root string) (map[string]Entry, error) {
	out := map[string]Entry{}
	inodes := map[uint64][]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return fmt.Errorf("lstat %s: %w", p, err)
		}
		e := Entry{Mode: st.Mode & 0o7777, UID: st.Uid, GID: st.Gid, Links: uint64(st.Nlink),
			Allocated: st.Blocks * 512, Rdev: st.Rdev}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			e.Type, e.Size = "file", st.Size
			sum, err := hashFile(p)
			if err != nil {
				return err
			}
			e.SHA256 = sum
			inodes[st.Ino] = append(inodes[st.Ino], rel)
		case unix.S_IFDIR:
			e.Type = "dir"
			e.Links = 0 // depends on subdirectory count only
		case unix.S_IFLNK:
			e.Type = "symlink"
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			e.Target = t
		case unix.S_IFIFO:
			e.Type = "fifo"
		case unix.S_IFCHR:
			e.Type = "char"
		case unix.S_IFBLK:
			e.Type = "block"
		case unix.S_IFSOCK:
			e.Type = "socket"
		}
		if e.Type != "symlink" {
			e.MTimeNS = st.Mtim.Nano()
			if e.Type != "file" {
				// rsync (3.x) compares the mtimes of directories and special
				// files to the second when it decides whether to set them, so
				// within one second the nanoseconds may stay as created.
				e.MTimeNS -= e.MTimeNS % 1e9
			}
			e.ACL = xattr(p, "system.posix_acl_access")
			e.Default = xattr(p, "system.posix_acl_default")
		}
		if rel == "." {
			e.MTimeNS = 0 // the root's mtime is the mount point's business
		}
		out[rel] = e
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, paths := range inodes {
		sort.Strings(paths)
		for _, p := range paths {
			e := out[p]
			e.LinkGroup = paths[0]
			out[p] = e
		}
	}
	return out, nil
}

func hashFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func xattr(p, name string) string {
	buf := make([]byte, 4096)
	n, err := unix.Lgetxattr(p, name, buf)
	if err != nil {
		return ""
	}
	return hex.EncodeToString(buf[:n])
}

// Diff lists how want and got differ; empty when they are equal. Sparse
// files in want must be sparse in got too: got may not allocate more than
// want plus slack for filesystem block rounding.
func Diff(want, got map[string]Entry) []string {
	var diffs []string
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			diffs = append(diffs, "missing: "+p)
			continue
		}
		wc, gc := w, g
		wc.Allocated, gc.Allocated = 0, 0
		if wc != gc {
			diffs = append(diffs, fmt.Sprintf("%s: want %+v, got %+v", p, w, g))
		}
		if w.Type == "file" && w.Allocated < w.Size && g.Allocated > w.Allocated+64<<10 {
			diffs = append(diffs, fmt.Sprintf("%s: sparse file not sparse: %d bytes allocated, source %d", p, g.Allocated, w.Allocated))
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, "unexpected: "+p)
		}
	}
	sort.Strings(diffs)
	return diffs
}

// ErrNotRoot is returned by Build when it cannot set owners and devices.
var ErrNotRoot = errors.New("fstree: building the fixture needs root")

// Build writes the fixture tree under root: nested and empty directories, a
// large and a sparse file, hard links, absolute, relative and dangling
// symlinks, POSIX ACLs (access and default), numeric owners, setuid and
// other modes, explicit mtimes, empty files, a FIFO and unicode names.
func Build(root string) error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	b := &builder{root: root}
	b.dir("a/b/c", 0o755)
	b.dir("empty-dir", 0o700)
	b.file("a/b/c/deep.txt", []byte("deep\n"), 0o644)
	b.file("empty-file", nil, 0o600)
	b.file("big.bin", pattern(8<<20), 0o644)
	b.sparse("sparse.img", 64<<20, []int64{0, 10 << 20, 63 << 20})
	b.file("hard/one", []byte("linked\n"), 0o640)
	b.link("hard/one", "hard/two")
	b.link("hard/one", "a/three")
	b.symlink("/etc/passwd", "abs-link")
	b.symlink("../a/b/c/deep.txt", "hard/rel-link")
	b.symlink("does/not/exist", "dangling")
	b.file("setuid", []byte("#!/bin/true\n"), 0o4755)
	b.file("setgid-sticky", []byte("x"), 0o2644)
	b.dir("sticky-dir", 0o1777)
	b.file("owned", []byte("owned\n"), 0o644)
	b.chown("owned", 1234, 5678)
	b.chown("a/b", 4321, 8765)
	b.lchown("dangling", 2000, 3000)
	b.file("acl-file", []byte("acl\n"), 0o640)
	b.setfacl("acl-file", "u:1234:rw-,g:5678:r--,m::rw-")
	b.dir("acl-dir", 0o750)
	b.setfacl("acl-dir", "d:u:1234:rwx,d:m::rwx")
	b.fifo("fifo", 0o620)
	b.file("ünïcødé-名前-🚀.txt", []byte("unicode\n"), 0o644)
	b.file("space in name", []byte("space\n"), 0o644)
	b.mtime("a/b/c/deep.txt", 1_600_000_000_123_456_789)
	b.mtime("big.bin", 1_500_000_000_000_000_000)
	b.mtime("a/b/c", 1_400_000_000_500_000_000)
	return b.err
}

// Change modifies a Build tree the way a live volume changes between syncs:
// content edits in place, a new file, a removed file, a removed non-empty
// directory, a new hard link, changed modes, owners and ACLs, a symlink
// retargeted.
func Change(root string) error {
	b := &builder{root: root}
	b.file("a/b/c/deep.txt", []byte("deep, edited\n"), 0o600)
	b.patch("big.bin", 4<<20, []byte("changed block"))
	b.file("new-file", []byte("new\n"), 0o644)
	b.remove("empty-file")
	b.remove("a/b") // non-empty: holds c/deep.txt
	b.dir("a/b", 0o755)
	b.link("owned", "owned-link")
	b.chown("owned", 1111, 2222)
	b.chmod("setuid", 0o755)
	b.setfacl("acl-file", "u:1234:r--")
	b.remove("hard/rel-link")
	b.symlink("../owned", "hard/rel-link")
	b.mtime("new-file", 1_700_000_000_000_000_001)
	return b.err
}

// builder makes paths, keeping the first error.
type builder struct {
	root string
	err  error
}

func (b *builder) p(rel string) string { return filepath.Join(b.root, rel) }

func (b *builder) do(what string, err error) {
	if b.err == nil && err != nil {
		b.err = fmt.Errorf("fstree: %s: %w", what, err)
	}
}

func (b *builder) dir(rel string, mode os.FileMode) {
	b.do("mkdir "+rel, os.MkdirAll(b.p(rel), 0o755))
	b.chmod(rel, mode)
}

func (b *builder) file(rel string, data []byte, mode os.FileMode) {
	b.do("mkdir for "+rel, os.MkdirAll(filepath.Dir(b.p(rel)), 0o755))
	b.do("write "+rel, os.WriteFile(b.p(rel), data, 0o600))
	b.chmod(rel, mode)
}

func (b *builder) chmod(rel string, mode os.FileMode) {
	b.do("chmod "+rel, unix.Chmod(b.p(rel), uint32(mode)))
}

func (b *builder) sparse(rel string, size int64, dataAt []int64) {
	f, err := os.Create(b.p(rel))
	b.do("create "+rel, err)
	if err != nil {
		return
	}
	defer f.Close()
	b.do("truncate "+rel, f.Truncate(size))
	for _, off := range dataAt {
		_, err := f.WriteAt(pattern(64<<10), off)
		b.do("write "+rel, err)
	}
}

func (b *builder) patch(rel string, off int64, data []byte) {
	f, err := os.OpenFile(b.p(rel), os.O_WRONLY, 0)
	b.do("open "+rel, err)
	if err != nil {
		return
	}
	defer f.Close()
	_, err = f.WriteAt(data, off)
	b.do("patch "+rel, err)
}

func (b *builder) link(old, rel string)   { b.do("link "+rel, os.Link(b.p(old), b.p(rel))) }
func (b *builder) symlink(to, rel string) { b.do("symlink "+rel, os.Symlink(to, b.p(rel))) }
func (b *builder) remove(rel string)      { b.do("remove "+rel, os.RemoveAll(b.p(rel))) }
func (b *builder) chown(rel string, u, g int) {
	b.do("chown "+rel, os.Chown(b.p(rel), u, g))
}
func (b *builder) lchown(rel string, u, g int) {
	b.do("lchown "+rel, os.Lchown(b.p(rel), u, g))
}
func (b *builder) fifo(rel string, mode uint32) {
	b.do("mkfifo "+rel, unix.Mkfifo(b.p(rel), mode))
	b.chmod(rel, os.FileMode(mode))
}

func (b *builder) mtime(rel string, ns int64) {
	ts := unix.NsecToTimespec(ns)
	b.do("utimes "+rel, unix.UtimesNanoAt(unix.AT_FDCWD, b.p(rel), []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW))
}

// setfacl sets ACL entries with the stock setfacl, the tool an operator
// would use (its encoding of the xattr is the reference).
func (b *builder) setfacl(rel, spec string) {
	if b.err != nil {
		return
	}
	out, err := runCmd("setfacl", "-m", spec, b.p(rel))
	if err != nil {
		b.err = fmt.Errorf("fstree: setfacl %s: %w: %s", rel, err, strings.TrimSpace(out))
	}
}

// pattern is incompressible-looking data that differs per block.
func pattern(n int) []byte {
	out := make([]byte, n)
	x := uint64(0x9E3779B97F4A7C15)
	for i := range out {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		out[i] = byte(x)
	}
	return out
}
