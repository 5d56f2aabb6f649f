// Package treedigest sums up a volume tree's metadata in one SHA-256, so
// that both ends of a sync can tell, without rsync, that nothing changed
// since the last completed one.
//
// Every entry contributes its path and what lstat says of it: type, mode,
// owner, size, device, inode, link count, modification and change times
// (to the nanosecond), a symlink's target, and its extended attributes
// (ACLs among them) by name and value. So the sum moves with everything
// rsync -aAHX compares, and with more: the change time (ctime) moves with
// any change through the filesystem, data included, and no one can set it
// back. Access times are left out (reading must not count). The walk
// never follows a symlink and never leaves the tree: each directory is
// opened relative to its parent's descriptor with O_NOFOLLOW, so a tree
// changed mid-walk (a directory swapped for a symlink) fails the walk
// instead of leading it elsewhere; the caller then syncs in full.
//
// Directories are summed as a Merkle tree (an entry of a directory carries
// its subtree's sum), and subtrees are walked in parallel. Walk keeps that
// tree (a Tree: per directory, each entry's name and the hash of its
// record), and Changes compares two of them, skipping every subtree whose
// sum is the same, to name what an incremental sync must send.
package treedigest

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Request is the ssh global request with which Ferry's source offers the
// digest of the tree it is about to send (the Sum's 32 bytes). Ferry's
// endpoint answers true only when its last completed sync received a tree
// of that very digest and its volume has not changed since: then the
// source sends nothing and ends the sync with `shutdown 0`. A stock sshd
// answers false to a request it does not know, so the source syncs in
// full.
const Request = "unchanged@ferrysync.io"

// BaseRequest is the ssh global request with which Ferry's source offers
// the digest of the tree its last completed sync to the destination sent
// (the Sum's 32 bytes), while it walks the tree it is about to send.
// Ferry's endpoint answers true only when its own last completed sync
// received a tree of that digest and its volume has not changed since:
// then what Changes lists between the two walks is all the sync must send.
const BaseRequest = "base@ferrysync.io"

// InPlace is the payload of a true answer to BaseRequest from a
// destination whose replica is never itself the image (each completed sync
// is snapshotted): the source may then have rsync update changed files in
// place (--inplace) rather than write a new copy of each.
const InPlace = "inplace"

// Sum is a tree's digest.
type Sum [sha256.Size]byte

// Of sums the tree at root (a directory), its own metadata included. A
// walk of a large volume takes a while: it stops, with ctx's error, at the
// next directory once ctx ends (a released assignment, an agent's
// shutdown).
func Of(ctx context.Context, root string) (Sum, error) {
	t, err := walk(ctx, root, false)
	if err != nil {
		return Sum{}, err
	}
	return t.Sum, nil
}

// Walk sums the tree at root as Of does and keeps what Changes needs to
// compare it with another walk of the same volume.
func Walk(ctx context.Context, root string) (*Tree, error) { return walk(ctx, root, true) }

func walk(ctx context.Context, root string, keep bool) (*Tree, error) {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", root, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat %s: %w", root, err)
	}
	w := &walker{ctx: ctx, slots: make(chan struct{}, 2*runtime.GOMAXPROCS(0)), keep: keep}
	if keep {
		w.links = map[string]uint64{}
	}
	sub, top, err := w.dir(fd, root, "") // closes fd
	if err != nil {
		return nil, err
	}
	xattrs, err := xattrsOf(unix.AT_FDCWD, root)
	if err != nil {
		return nil, fmt.Errorf("read xattrs of %s: %w", root, err)
	}
	rec := entry(".", &st, "", xattrs, sub)
	t := &Tree{Sum: sha256.Sum256(rec), links: w.links, entries: int(w.entries.Load()) + 1}
	if keep {
		t.root, t.rootRec = top, hashOwn(rec)
	}
	return t, nil
}

type walker struct {
	// ctx ends the walk at the next directory.
	ctx context.Context
	// slots bounds the goroutines walking subtrees; a directory that finds
	// none free is walked by its parent's goroutine.
	slots chan struct{}
	// keep: build the Tree's directories and link index, not just the sum.
	keep    bool
	entries atomic.Int64
	mu      sync.Mutex
	links   map[string]uint64
}

// dir sums the directory open at fd (closed when done); path is for
// errors, rel its path in the tree ("" for the root). With keep it also
// returns the directory's entries.
func (w *walker) dir(fd int, path, rel string) (Sum, *dir, error) {
	f := os.NewFile(uintptr(fd), path)
	if err := w.ctx.Err(); err != nil {
		f.Close()
		return Sum{}, nil, fmt.Errorf("sum %s: %w", path, err)
	}
	names, err := f.Readdirnames(-1)
	if err != nil {
		f.Close()
		return Sum{}, nil, fmt.Errorf("read %s: %w", path, err)
	}
	sort.Strings(names)
	w.entries.Add(int64(len(names)))
	l := &level{fd: fd, path: path, rel: rel, names: names, records: make([][]byte, len(names))}
	if w.keep {
		l.kept = &dir{names: names, own: make([]recHash, len(names)), subs: make([]*dir, len(names))}
	}
	for i := range names {
		w.visit(l, i)
	}
	l.wg.Wait()
	f.Close()
	if len(l.errs) > 0 {
		return Sum{}, nil, errors.Join(l.errs...)
	}
	h := sha256.New()
	for i, e := range l.records {
		h.Write(e)
		if l.kept != nil {
			l.kept.own[i] = hashOwn(e)
		}
	}
	sum := Sum(h.Sum(nil))
	if l.kept != nil {
		l.kept.sum = sum
	}
	return sum, l.kept, nil
}

// level is one directory being walked: its entries' records, in name
// order (a subdirectory's is filled in by whichever goroutine walks it),
// what keep keeps of it, and the errors met.
type level struct {
	fd        int
	path, rel string
	names     []string
	records   [][]byte
	kept      *dir
	wg        sync.WaitGroup
	mu        sync.Mutex
	errs      []error
}

func (l *level) fail(err error) {
	l.mu.Lock()
	l.errs = append(l.errs, err)
	l.mu.Unlock()
}

// visit records entry i of the directory; a subdirectory is walked in a
// goroutine of its own when a slot is free, else in this one.
func (w *walker) visit(l *level, i int) {
	name := l.names[i]
	var st unix.Stat_t
	if err := unix.Fstatat(l.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		l.fail(fmt.Errorf("stat %s/%s: %w", l.path, name, err))
		return
	}
	xattrs, err := xattrsOf(l.fd, name)
	if err != nil {
		l.fail(fmt.Errorf("read xattrs of %s/%s: %w", l.path, name, err))
		return
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		target, err := readlinkat(l.fd, name)
		if err != nil {
			l.fail(fmt.Errorf("read link %s/%s: %w", l.path, name, err))
			return
		}
		l.records[i] = entry(name, &st, target, xattrs, Sum{})
	case unix.S_IFDIR:
		sub, err := unix.Openat(l.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			l.fail(fmt.Errorf("open %s/%s (changed while walked?): %w", l.path, name, err))
			return
		}
		walk := func() {
			s, d, err := w.dir(sub, l.path+"/"+name, join(l.rel, name))
			if err != nil {
				l.fail(err)
				return
			}
			l.records[i] = entry(name, &st, "", xattrs, s)
			if l.kept != nil {
				l.kept.subs[i] = d
			}
		}
		select {
		case w.slots <- struct{}{}:
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				defer func() { <-w.slots }()
				walk()
			}()
		default:
			walk()
		}
	default:
		l.records[i] = entry(name, &st, "", xattrs, Sum{})
		if w.keep && st.Nlink > 1 {
			w.mu.Lock()
			w.links[join(l.rel, name)] = st.Ino
			w.mu.Unlock()
		}
	}
}

// entry is an entry's record: its name, metadata, link target, xattrs and
// (for a directory) its subtree's sum, the variable-length parts
// length-prefixed so no two entries read alike.
func entry(name string, st *unix.Stat_t, target string, xattrs []byte, sub Sum) []byte {
	b := make([]byte, 0, 3*binary.MaxVarintLen64+len(name)+11*8+len(target)+len(xattrs)+len(sub))
	b = binary.AppendUvarint(b, uint64(len(name)))
	b = append(b, name...)
	for _, v := range []uint64{uint64(st.Mode), uint64(st.Uid), uint64(st.Gid), uint64(st.Size), uint64(st.Rdev),
		st.Ino, uint64(st.Nlink), uint64(st.Mtim.Sec), uint64(st.Mtim.Nsec), uint64(st.Ctim.Sec), uint64(st.Ctim.Nsec)} {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	b = binary.AppendUvarint(b, uint64(len(target)))
	b = append(b, target...)
	b = binary.AppendUvarint(b, uint64(len(xattrs)))
	b = append(b, xattrs...)
	return append(b, sub[:]...)
}

func readlinkat(dirfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// xattrsOf returns an entry's extended attributes, names and values in
// name order, length-prefixed. The entry is named relative to the open
// directory dirfd (listxattr, procPath), and no call follows a final
// symlink.
func xattrsOf(dirfd int, name string) ([]byte, error) {
	size, err := listxattr(dirfd, name, nil)
	if err != nil || size == 0 {
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		return nil, err
	}
	list := make([]byte, size)
	if size, err = listxattr(dirfd, name, list); err != nil {
		return nil, err
	}
	path := procPath(dirfd, name)
	names := bytesSplit(list[:size])
	sort.Strings(names)
	var out []byte
	for _, n := range names {
		vsize, err := unix.Lgetxattr(path, n, nil)
		if err != nil {
			return nil, err
		}
		val := make([]byte, vsize)
		if vsize, err = unix.Lgetxattr(path, n, val); err != nil {
			return nil, err
		}
		out = binary.AppendUvarint(out, uint64(len(n)))
		out = append(out, n...)
		out = binary.AppendUvarint(out, uint64(vsize))
		out = append(out, val[:vsize]...)
	}
	return out, nil
}

// noListxattrat is set once the kernel says it has no listxattrat (before
// Linux 6.13).
var noListxattrat atomic.Bool

// procPath names an entry relative to the open directory dirfd for the
// calls that take a path only.
func procPath(dirfd int, name string) string {
	if dirfd == unix.AT_FDCWD {
		return name
	}
	return fmt.Sprintf("/proc/self/fd/%d/%s", dirfd, name)
}

// listxattr lists an entry's xattr names into buf (nil: just the size):
// with listxattrat relative to dirfd where the kernel has it (most entries
// have no xattrs, and this is the walk's one extra call per entry, so it
// builds no path), else through procPath.
func listxattr(dirfd int, name string, buf []byte) (int, error) {
	if !noListxattrat.Load() {
		p, err := unix.BytePtrFromString(name)
		if err != nil {
			return 0, err
		}
		var b unsafe.Pointer
		if len(buf) > 0 {
			b = unsafe.Pointer(&buf[0])
		}
		r, _, errno := unix.Syscall6(unix.SYS_LISTXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)),
			unix.AT_SYMLINK_NOFOLLOW, uintptr(b), uintptr(len(buf)), 0)
		if errno != unix.ENOSYS {
			if errno != 0 {
				return 0, errno
			}
			return int(r), nil
		}
		noListxattrat.Store(true)
	}
	return unix.Llistxattr(procPath(dirfd, name), buf)
}

// bytesSplit splits a NUL-terminated list of names.
func bytesSplit(list []byte) []string {
	var out []string
	start := 0
	for i, c := range list {
		if c == 0 {
			if i > start {
				out = append(out, string(list[start:i]))
			}
			start = i + 1
		}
	}
	return out
}
