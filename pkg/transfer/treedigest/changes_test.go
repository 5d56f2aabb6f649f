package treedigest

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// fake builds a Tree from "path=rec" entries, rec standing for the entry's
// own record (a path ending in "/" is a directory; "." is the root), with
// the inodes of its multiply-linked files; directory sums follow from
// their entries as in a walk.
func fake(links map[string]uint64, entries ...string) *Tree {
	t := &Tree{root: &dir{}, links: links, entries: len(entries) + 1}
	dirs := map[string]*dir{"": t.root}
	entries = append([]string(nil), entries...)
	sort.Strings(entries)
	for _, e := range entries {
		path, rec, _ := strings.Cut(e, "=")
		h := sha256.Sum256([]byte(rec))
		own := recHash(h[:16])
		if path == "." {
			t.rootRec = own
			continue
		}
		var sub *dir
		if strings.HasSuffix(path, "/") {
			path = strings.TrimSuffix(path, "/")
			sub = &dir{}
			dirs[path] = sub
		}
		d := dirs[parent(path)]
		d.names = append(d.names, strings.TrimPrefix(strings.TrimPrefix(path, parent(path)), "/"))
		d.own = append(d.own, own)
		d.subs = append(d.subs, sub)
	}
	var sum func(d *dir) Sum
	sum = func(d *dir) Sum {
		h := sha256.New()
		for i, n := range d.names {
			h.Write([]byte(n))
			h.Write(d.own[i][:])
			if d.subs[i] != nil {
				s := sum(d.subs[i])
				h.Write(s[:])
			}
		}
		d.sum = Sum(h.Sum(nil))
		return d.sum
	}
	t.Sum = sum(t.root)
	t.Sum[0] ^= t.rootRec[0]
	return t
}

func TestChanges(t *testing.T) {
	base := []string{".=1", "a/=1", "a/x=1", "a/y=1", "b=1", "c/=1", "c/d/=1", "c/d/e=1", "f=1", "g=1", "h=1", "i=1", "j=1"}
	// with applies changes to base: "path=rec" replaces or adds, "-path"
	// removes the entry and everything under it.
	with := func(changes ...string) []string {
		out := append([]string(nil), base...)
		for _, ch := range changes {
			path, _, _ := strings.Cut(strings.TrimPrefix(ch, "-"), "=")
			path = strings.TrimSuffix(path, "/")
			for i := 0; i < len(out); i++ {
				p, _, _ := strings.Cut(out[i], "=")
				if p = strings.TrimSuffix(p, "/"); p == path || strings.HasPrefix(p, path+"/") {
					out = append(out[:i], out[i+1:]...)
					i--
				}
			}
			if !strings.HasPrefix(ch, "-") {
				out = append(out, ch)
			}
		}
		return out
	}
	for name, tc := range map[string]struct {
		cur   []string
		links map[string]uint64
		want  []string
		full  bool
	}{
		"a file rewritten: only it":  {cur: with("a/x=2"), want: []string{"a/x"}},
		"a deep change: only it":     {cur: with("c/d/e=2"), want: []string{"c/d/e"}},
		"a directory changed itself": {cur: with("c/d/=2"), want: []string{"c/d/."}},
		"a file gone: its directory's contents": {cur: with("a/=2", "-a/x"),
			want: []string{"a/."}},
		"a file gone, its directory's times kept (a belt)": {cur: with("-a/x"), want: []string{"a/."}},
		"a new directory: its contents and its subdirectories'": {cur: with(".=2", "n/=1", "n/z=1", "n/m/=1", "n/m/k=1"),
			want: []string{".", "n/.", "n/m/."}},
		"a directory became a file":      {cur: with(".=2", "-a/", "a=2"), want: []string{"."}},
		"a file became a directory":      {cur: with(".=2", "-b", "b/=2", "b/in=1"), want: []string{".", "b/."}},
		"a directory gone with its tree": {cur: with(".=2", "-c/"), want: []string{"."}},
		"a listed link brings its group": {cur: with("b=2", "a/x=2"), links: map[string]uint64{"b": 7, "a/x": 7, "j": 8, "c/d/e": 8},
			want: []string{"a/x", "b"}},
		"a link in a listed directory brings its group": {cur: with(".=2", "n/=1", "n/h=1"), links: map[string]uint64{"n/h": 9, "a/y": 9},
			want: []string{".", "a/y", "n/."}},
		"a new file in a directory listed anyway": {cur: with("a/=2", "a/new=1", "a/x=2"), want: []string{"a/."}},
		"a link whose group is all in listed directories": {cur: with(".=2", "n/=1", "n/h=1"), links: map[string]uint64{"n/h": 9, "f": 9},
			want: []string{".", "n/."}},
	} {
		t.Run(name, func(t *testing.T) {
			got, ok := Changes(fake(nil, base...), fake(tc.links, tc.cur...))
			require.Equal(t, !tc.full, ok)
			require.Equal(t, tc.want, got)
		})
	}
	got, ok := Changes(fake(nil, base...), fake(nil, base...))
	require.True(t, ok)
	require.Empty(t, got, "the same sum: nothing to send")

	var before, after []string
	for i := 0; i < 3000; i++ {
		before = append(before, fmt.Sprintf("f%d=1", i))
		after = append(after, fmt.Sprintf("f%d=%d", i, 1+i%3/2)) // a third changed
	}
	got, ok = Changes(fake(nil, before...), fake(nil, after...))
	require.True(t, ok)
	require.Len(t, got, 1000)
	after = append(after[:0], before...)
	for i := range after[:1600] {
		after[i] = fmt.Sprintf("f%d=2", i)
	}
	_, ok = Changes(fake(nil, before...), fake(nil, after...))
	require.False(t, ok, "more than half changed: sync in full")
}

// TestChangesOfAWalkedTree: on a real tree, a rewrite lists the file
// alone; a new hard link lists its directory's contents and its group
// (the link count moved), a deletion its directory's contents and, there
// being a link in it, that link's group.
func TestChangesOfAWalkedTree(t *testing.T) {
	root, _ := tree(t)
	walk := func() *Tree {
		tr, err := Walk(t.Context(), root)
		require.NoError(t, err)
		return tr
	}
	before := walk()
	require.NoError(t, os.WriteFile(filepath.Join(root, "a/b/c/z"), []byte("new"), 0o644))
	mid := walk()
	got, ok := Changes(before, mid)
	require.True(t, ok)
	require.Equal(t, []string{"a/b/c/z"}, got)

	require.NoError(t, os.Link(filepath.Join(root, "top"), filepath.Join(root, "e/f/top-link")))
	require.NoError(t, os.Remove(filepath.Join(root, "d/w")))
	got, ok = Changes(mid, walk())
	require.True(t, ok)
	require.Equal(t, []string{"a/x", "d/.", "e/f/.", "top"}, got)
}
