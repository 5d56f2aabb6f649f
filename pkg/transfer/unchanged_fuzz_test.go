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
	seed := uint64(envFloat("FERRY_FUZZ_SEED", 15))
	rounds := int(envFloat("FERRY_FUZZ_ROUNDS", 100))
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
	pick := func(list []string) string { return list[rng.IntN(len(list))] }
	p := func(rel string) string { return filepath.Join(root, rel) }
	later := time.Now().Add(time.Duration(round+1) * time.Second)
	ops := []string{"create", "create", "edit", "append", "truncate", "rename", "rename-dir", "rename-dir", "delete", "rmdir", "chmod", "chown",
		"link", "unlink-link", "symlink", "retarget", "xattr", "acl", "file-to-dir", "dir-to-symlink", "mtime"}
	for {
		op := pick(ops)
		needsFile := op != "create" && op != "symlink" && op != "rmdir" && op != "dir-to-symlink" && op != "rename-dir"
		if needsFile && len(files) == 0 {
			continue
		}
		switch op {
		case "create":
			name := filepath.Join(pick(dirs), fmt.Sprintf("f%d", round))
			require.NoError(t, os.WriteFile(p(name), randomBytes(rng, rng.IntN(20000)), 0o644))
		case "edit":
			f := pick(files)
			data, err := os.ReadFile(p(f))
			require.NoError(t, err)
			if len(data) == 0 {
				continue
			}
			data[rng.IntN(len(data))] ^= 0x5a
			require.NoError(t, os.WriteFile(p(f), data, 0o644))
			require.NoError(t, os.Chtimes(p(f), later, later))
		case "append":
			f, err := os.OpenFile(p(pick(files)), os.O_APPEND|os.O_WRONLY, 0)
			require.NoError(t, err)
			_, err = f.Write(randomBytes(rng, 1+rng.IntN(5000)))
			require.NoError(t, err)
			require.NoError(t, f.Close())
		case "truncate":
			require.NoError(t, os.Truncate(p(pick(files)), int64(rng.IntN(100))))
		case "rename":
			f := pick(files)
			require.NoError(t, os.Rename(p(f), p(filepath.Join(pick(dirs), fmt.Sprintf("moved%d", round)))))
		case "rename-dir":
			from, to := pick(dirs), pick(dirs)
			if from == "." || to == from || strings.HasPrefix(to, from+"/") {
				continue
			}
			require.NoError(t, os.Rename(p(from), p(filepath.Join(to, fmt.Sprintf("moved-dir%d", round)))))
		case "delete":
			require.NoError(t, os.Remove(p(pick(files))))
		case "rmdir":
			d := pick(dirs)
			if d == "." {
				continue
			}
			require.NoError(t, os.RemoveAll(p(d)))
		case "chmod":
			require.NoError(t, os.Chmod(p(pick(files)), os.FileMode(0o600+rng.IntN(0o100))))
		case "chown":
			require.NoError(t, os.Lchown(p(pick(files)), 1000+rng.IntN(5), 1000+rng.IntN(5)))
		case "link":
			require.NoError(t, os.Link(p(pick(files)), p(filepath.Join(pick(dirs), fmt.Sprintf("hl%d", round)))))
		case "unlink-link":
			f := pick(files)
			var st unix.Stat_t
			require.NoError(t, unix.Lstat(p(f), &st))
			if st.Nlink < 2 {
				continue
			}
			data, err := os.ReadFile(p(f))
			require.NoError(t, err)
			require.NoError(t, os.Remove(p(f)))
			require.NoError(t, os.WriteFile(p(f), append(data, 'x'), 0o644))
		case "symlink":
			require.NoError(t, os.Symlink(fmt.Sprintf("target-%d", rng.IntN(10)), p(filepath.Join(pick(dirs), fmt.Sprintf("s%d", round)))))
		case "retarget":
			links := symlinks(t, root)
			if len(links) == 0 {
				continue
			}
			l := pick(links)
			require.NoError(t, os.Remove(p(l)))
			require.NoError(t, os.Symlink(fmt.Sprintf("elsewhere-%d", round), p(l)))
		case "xattr":
			require.NoError(t, unix.Lsetxattr(p(pick(files)), "user.round", []byte(fmt.Sprint(round)), 0))
		case "acl":
			out, err := exec.Command("setfacl", "-m", fmt.Sprintf("u:%d:r", 2000+round) /* a new entry: setfacl leaves an ACL it would not change alone */, p(pick(files))).CombinedOutput()
			require.NoError(t, err, string(out))
		case "file-to-dir":
			f := pick(files)
			require.NoError(t, os.Remove(p(f)))
			require.NoError(t, os.MkdirAll(p(filepath.Join(f, "inner")), 0o755))
		case "dir-to-symlink":
			d := pick(dirs)
			if d == "." {
				continue
			}
			require.NoError(t, os.RemoveAll(p(d)))
			require.NoError(t, os.Symlink("a", p(d)))
		case "mtime":
			require.NoError(t, os.Chtimes(p(pick(files)), later, later))
		}
		if len(dirsOf(t, root)) == 0 { // keep somewhere to create things
			require.NoError(t, os.Mkdir(filepath.Join(root, fmt.Sprintf("dir%d", round)), 0o755))
		}
		return op
	}
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
