package transfer_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/pkg/transfer/endpoint"
	"github.com/ferrysync/ferry/pkg/transfer/sender"
)

// TestSyncsFollowRandomChanges: rounds of one to three random changes to
// the source (or none) between syncs, with a fixed seed (FERRY_FUZZ_SEED
// picks another, FERRY_FUZZ_ROUNDS more rounds): a sync is skipped exactly
// when nothing changed, every other sync but the first is incremental
// (only the changed entries handed to rsync), and after every round the
// replica equals the source in everything the fidelity checker sees (data,
// modes, owners, times, hard links, ACLs, link targets). Every fifth round
// the source forgets its record, so full syncs between incremental ones are
// covered too. Into a destination that allows it (a Snapshot
// destination's), syncs update files in place exactly when the replica has
// no hard links; that run starts without any, so links come and go.
func TestSyncsFollowRandomChanges(t *testing.T) {
	testenv.NeedRoot(t)
	t.Run("new copies", func(t *testing.T) { fuzzSyncs(t, false) })
	t.Run("in place", func(t *testing.T) { fuzzSyncs(t, true) })
}

func fuzzSyncs(t *testing.T, inPlace bool) {
	seed := uint64(testenv.EnvFloat("FERRY_FUZZ_SEED", 15))
	rounds := int(testenv.EnvFloat("FERRY_FUZZ_ROUNDS", 100))
	rng := rand.New(rand.NewPCG(seed, seed))
	k := keys(t, "fuzz")
	src, dst := t.TempDir(), t.TempDir()
	startTree(t, rng, src, !inPlace)
	var ev events
	// A skipped sync takes milliseconds: more handshakes a second than a
	// destination allows by default.
	lim := endpoint.DefaultLimits
	lim.HandshakeRate = 1000
	_, port := serveDestination(t, endpoint.Destination{Keys: k.dst, Volume: dst, Privileged: true, InPlace: inPlace}, &ev, endpoint.WithLimits(lim))
	counts := map[string]int{}
	record := &sender.Record{}
	for round := 0; round < rounds; round++ {
		linked := hardLinks(t, src) // in the tree the replica holds
		changed := ""
		if round == 0 || rng.IntN(4) > 0 {
			for n := 1 + rng.IntN(3); n > 0; n-- { // up to three at once
				op := change(t, rng, src, round*3+n)
				counts[op]++
				changed += op + " "
			}
		} else {
			counts["none"]++
		}
		forgot := round%5 == 4
		if forgot {
			record = &sender.Record{}
		}
		recorded := ev.count(endpoint.Recorded)
		res, err := push(t, k.src, port, src, func(o *sender.Options) { o.Record = record })
		require.NoError(t, err, res.Errors)
		incremental := changed != "" && round > 0 && !forgot
		require.Equal(t, changed == "" && round > 0, res.Unchanged, "round %d (seed %d): change %q", round, seed, changed)
		require.Equal(t, incremental, res.Listed > 0, "round %d (seed %d): change %q, incremental", round, seed, changed)
		require.Equal(t, incremental && inPlace && !linked, res.InPlace, "round %d (seed %d): change %q, in place", round, seed, changed)
		requireSame(t, src, dst)
		if !res.Unchanged {
			ev.waitForCount(t, endpoint.Recorded, recorded+1)
		}
		if res.InPlace {
			counts["(in place)"]++
		}
	}
	t.Logf("seed %d, %d rounds, changes: %v", seed, rounds, counts)
}

// startTree fills root with the fuzzers' starting tree: forty small files
// in four directories, with hard links across directories (for renames of
// one of them) when links is set.
func startTree(t *testing.T, rng *rand.Rand, root string, links bool) {
	t.Helper()
	starting := []string{"a", "a/b", "c", "d/e/f"}
	for _, d := range starting {
		require.NoError(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	for i := 0; i < 40; i++ {
		name := filepath.Join(starting[i%4], fmt.Sprintf("start%d", i))
		require.NoError(t, os.WriteFile(filepath.Join(root, name), randomBytes(rng, rng.IntN(3000)), 0o644))
		if i%4 == 0 && links {
			require.NoError(t, os.Link(filepath.Join(root, name), filepath.Join(root, starting[1+i%3], fmt.Sprintf("link%d", i))))
		}
	}
}

// hardLinks says whether a file under root has more than one name.
func hardLinks(t *testing.T, root string) bool {
	t.Helper()
	files, _ := entries(t, root)
	for _, f := range files {
		var st unix.Stat_t
		require.NoError(t, unix.Lstat(filepath.Join(root, f), &st))
		if st.Nlink > 1 {
			return true
		}
	}
	return false
}

// change makes one random change under root, with a new mtime where the
// change is to data (rsync's quick check, like any full rsync, would not
// see a same-size rewrite within the same mtime), and says which.
func change(t *testing.T, rng *rand.Rand, root string, round int) string {
	t.Helper()
	files, dirs := entries(t, root)
	c := &treeChange{t: t, rng: rng, root: root, round: round, files: files, dirs: dirs,
		later: time.Now().Add(time.Duration(round+1) * time.Second)}
	ops := []string{"create", "create", "edit", "append", "truncate", "rename", "rename-dir", "rename-dir", "delete", "rmdir", "chmod", "chown",
		"link", "unlink-link", "symlink", "retarget", "xattr", "acl", "file-to-dir", "dir-to-symlink", "mtime"}
	for {
		op := c.pick(ops)
		needsFile := op != "create" && op != "symlink" && op != "rmdir" && op != "dir-to-symlink" && op != "rename-dir"
		if needsFile && len(files) == 0 {
			continue
		}
		if !c.content(op) && !c.names(op) {
			continue
		}
		if len(dirsOf(t, root)) == 0 { // keep somewhere to create things
			require.NoError(t, os.Mkdir(filepath.Join(root, fmt.Sprintf("dir%d", round)), 0o755))
		}
		return op
	}
}

// treeChange is one round's change: the tree's files and directories
// before it, and the mtime a change of data gets.
type treeChange struct {
	t           *testing.T
	rng         *rand.Rand
	root        string
	round       int
	files, dirs []string
	later       time.Time
}

func (c *treeChange) pick(list []string) string { return list[c.rng.IntN(len(list))] }
func (c *treeChange) p(rel string) string       { return filepath.Join(c.root, rel) }

// content makes op if it changes files' data or existence; false: op is
// not one of those, or the tree has nothing it applies to.
func (c *treeChange) content(op string) bool {
	switch op {
	case "create":
		name := filepath.Join(c.pick(c.dirs), fmt.Sprintf("f%d", c.round))
		require.NoError(c.t, os.WriteFile(c.p(name), randomBytes(c.rng, c.rng.IntN(20000)), 0o644))
	case "edit":
		f := c.pick(c.files)
		data, err := os.ReadFile(c.p(f))
		require.NoError(c.t, err)
		if len(data) == 0 {
			return false
		}
		data[c.rng.IntN(len(data))] ^= 0x5a
		require.NoError(c.t, os.WriteFile(c.p(f), data, 0o644))
		require.NoError(c.t, os.Chtimes(c.p(f), c.later, c.later))
	case "append":
		f, err := os.OpenFile(c.p(c.pick(c.files)), os.O_APPEND|os.O_WRONLY, 0)
		require.NoError(c.t, err)
		_, err = f.Write(randomBytes(c.rng, 1+c.rng.IntN(5000)))
		require.NoError(c.t, err)
		require.NoError(c.t, f.Close())
	case "truncate":
		require.NoError(c.t, os.Truncate(c.p(c.pick(c.files)), int64(c.rng.IntN(100))))
	case "delete":
		require.NoError(c.t, os.Remove(c.p(c.pick(c.files))))
	case "unlink-link":
		f := c.pick(c.files)
		var st unix.Stat_t
		require.NoError(c.t, unix.Lstat(c.p(f), &st))
		if st.Nlink < 2 {
			return false
		}
		data, err := os.ReadFile(c.p(f))
		require.NoError(c.t, err)
		require.NoError(c.t, os.Remove(c.p(f)))
		require.NoError(c.t, os.WriteFile(c.p(f), append(data, 'x'), 0o644))
	case "file-to-dir":
		f := c.pick(c.files)
		require.NoError(c.t, os.Remove(c.p(f)))
		require.NoError(c.t, os.MkdirAll(c.p(filepath.Join(f, "inner")), 0o755))
	case "mtime":
		require.NoError(c.t, os.Chtimes(c.p(c.pick(c.files)), c.later, c.later))
	default:
		return false
	}
	return true
}

// names makes op if it changes names, links or metadata; false: op is not
// one of those, or the tree has nothing it applies to.
func (c *treeChange) names(op string) bool {
	switch op {
	case "rename":
		f := c.pick(c.files)
		require.NoError(c.t, os.Rename(c.p(f), c.p(filepath.Join(c.pick(c.dirs), fmt.Sprintf("moved%d", c.round)))))
	case "rename-dir":
		from, to := c.pick(c.dirs), c.pick(c.dirs)
		if from == "." || to == from || strings.HasPrefix(to, from+"/") {
			return false
		}
		require.NoError(c.t, os.Rename(c.p(from), c.p(filepath.Join(to, fmt.Sprintf("moved-dir%d", c.round)))))
	case "rmdir":
		d := c.pick(c.dirs)
		if d == "." {
			return false
		}
		require.NoError(c.t, os.RemoveAll(c.p(d)))
	case "chmod":
		require.NoError(c.t, os.Chmod(c.p(c.pick(c.files)), os.FileMode(0o600+c.rng.IntN(0o100))))
	case "chown":
		require.NoError(c.t, os.Lchown(c.p(c.pick(c.files)), 1000+c.rng.IntN(5), 1000+c.rng.IntN(5)))
	case "link":
		require.NoError(c.t, os.Link(c.p(c.pick(c.files)), c.p(filepath.Join(c.pick(c.dirs), fmt.Sprintf("hl%d", c.round)))))
	case "symlink":
		require.NoError(c.t, os.Symlink(fmt.Sprintf("target-%d", c.rng.IntN(10)), c.p(filepath.Join(c.pick(c.dirs), fmt.Sprintf("s%d", c.round)))))
	case "retarget":
		links := symlinks(c.t, c.root)
		if len(links) == 0 {
			return false
		}
		l := c.pick(links)
		require.NoError(c.t, os.Remove(c.p(l)))
		require.NoError(c.t, os.Symlink(fmt.Sprintf("elsewhere-%d", c.round), c.p(l)))
	case "xattr":
		require.NoError(c.t, unix.Lsetxattr(c.p(c.pick(c.files)), "user.round", []byte(fmt.Sprint(c.round)), 0))
	case "acl":
		out, err := exec.Command("setfacl", "-m", fmt.Sprintf("u:%d:r", 2000+c.round) /* a new entry: setfacl leaves an ACL it would not change alone */, c.p(c.pick(c.files))).CombinedOutput()
		require.NoError(c.t, err, string(out))
	case "dir-to-symlink":
		d := c.pick(c.dirs)
		if d == "." {
			return false
		}
		require.NoError(c.t, os.RemoveAll(c.p(d)))
		require.NoError(c.t, os.Symlink("a", c.p(d)))
	default:
		return false
	}
	return true
}

// entries lists the regular files and directories under root (relative;
// "." for root itself).
func entries(t *testing.T, root string) (files, dirs []string) {
	t.Helper()
	require.NoError(t, filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		require.NoError(t, err)
		rel, _ := filepath.Rel(root, path)
		switch {
		case d.IsDir():
			dirs = append(dirs, rel)
		case d.Type().IsRegular():
			files = append(files, rel)
		}
		return nil
	}))
	return files, dirs
}

func dirsOf(t *testing.T, root string) []string {
	_, dirs := entries(t, root)
	return dirs[1:] // without root
}

func symlinks(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	require.NoError(t, filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		require.NoError(t, err)
		if d.Type()&os.ModeSymlink != 0 {
			rel, _ := filepath.Rel(root, path)
			out = append(out, rel)
		}
		return nil
	}))
	return out
}

func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}
