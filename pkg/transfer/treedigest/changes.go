package treedigest

import (
	"crypto/sha256"
	"sort"
	"strings"
)

// Tree is a walked tree: its Sum and, per directory, each entry's name and
// the hash of its own record, and each subdirectory's sum, so that two
// walks compare subtree by subtree. It keeps no data and no other
// metadata: about 70 bytes an entry (6.8 MB for 100,000).
type Tree struct {
	// Sum is the tree's digest, as Of gives it.
	Sum     Sum
	root    *dir
	rootRec recHash
	// links maps every multiply-linked non-directory to its inode, so that
	// a changed member brings its whole group into a sync.
	links map[string]uint64
	// entries counts the tree's entries, the root among them.
	entries int
}

// HardLinks says whether the tree has a file of more than one name. Where
// a replica of it does, rsync --inplace must not be used: writing into one
// name of a group the source has since broken up would change the others.
func (t *Tree) HardLinks() bool { return len(t.links) > 0 }

// dir is a directory of a Tree: its entries in name order.
type dir struct {
	names []string
	// own is the hash of each entry's own record: all of it but, for a
	// directory, its subtree's sum.
	own []recHash
	// subs holds a subdirectory's entries (nil for other types).
	subs []*dir
	// sum is the directory's subtree sum.
	sum Sum
}

// recHash is the hash of an entry's own record, cut to 128 bits: no one
// chooses the ctime and inode an entry's record carries.
type recHash [16]byte

// hashOwn hashes an entry's record without the subtree sum that ends it.
func hashOwn(rec []byte) recHash {
	s := sha256.Sum256(rec[:len(rec)-len(Sum{})])
	return recHash(s[:16])
}

// Root is how Changes names the tree's root in rsync's --files-from.
const Root = "."

// Changes names what a sync must send to turn the replica an earlier sync
// made of prev into a copy of cur, for rsync's --files-from with --dirs and
// --delete (which sends each name's parents with it):
//
//   - a changed or new non-directory by its path;
//   - a directory whose own record changed, or that is new, by its
//     contents ("dir/.", or "." for the root): rsync then sends its
//     entries one level deep and deletes on the receiver what it no longer
//     has. A directory's change time moves whenever an entry is made,
//     removed or renamed in it, so this also catches what the receiver got
//     and the earlier walk never saw (a live volume changed between the
//     walk and rsync);
//   - the subdirectories of a new directory, the same way, and whatever
//     differs below a directory whose subtree sum moved; a subtree that
//     sums as before is not looked into;
//   - every member of a hard-link group one of whose members is listed.
//
// ok is false when the list would name more than half of cur's entries
// (and more than minFull): then a full sync walks less.
func Changes(prev, cur *Tree) (list []string, ok bool) {
	if prev.Sum == cur.Sum {
		return nil, true
	}
	c := &changes{seen: map[string]bool{}, limit: max(cur.entries/2, minFull)}
	if prev.rootRec != cur.rootRec {
		c.add(Root)
	}
	c.dir("", prev.root, cur.root)
	c.linkGroups(cur.links)
	if len(c.list) > c.limit {
		return nil, false
	}
	sort.Strings(c.list)
	return c.list, true
}

// minFull is the longest list that never turns a sync into a full one: on
// a small tree either costs next to nothing.
const minFull = 1000

type changes struct {
	list  []string
	seen  map[string]bool
	limit int
}

func (c *changes) add(p string) {
	if !c.seen[p] && len(c.list) <= c.limit {
		c.seen[p] = true
		c.list = append(c.list, p)
	}
}

// linkGroups adds every member of a hard-link group one of whose members
// is listed, by name or in its directory's contents: rsync links only the
// names in its file list, and would send a member without the others as a
// file of its own.
func (c *changes) linkGroups(links map[string]uint64) {
	listed := func(p string) bool { return c.seen[p] || c.seen[contents(parent(p))] }
	groups := map[uint64][]string{}
	sent := map[uint64]bool{}
	for p, ino := range links {
		groups[ino] = append(groups[ino], p)
		if listed(p) {
			sent[ino] = true
		}
	}
	for ino := range sent {
		for _, q := range groups[ino] {
			if !listed(q) {
				c.add(q)
			}
		}
	}
}

// dir compares a directory at rel present, as a directory, in both trees.
func (c *changes) dir(rel string, prev, cur *dir) {
	file := func(p string) { // unless its directory's contents are listed
		if !c.seen[contents(rel)] {
			c.add(p)
		}
	}
	i, j := 0, 0
	for (i < len(prev.names) || j < len(cur.names)) && len(c.list) <= c.limit {
		switch {
		case j == len(cur.names) || (i < len(prev.names) && prev.names[i] < cur.names[j]):
			c.add(contents(rel)) // an entry gone from cur
			i++
		case i == len(prev.names) || cur.names[j] < prev.names[i]:
			if cur.subs[j] == nil {
				file(join(rel, cur.names[j]))
			} else {
				c.added(join(rel, cur.names[j]), cur.subs[j])
			}
			j++
		default:
			p := join(rel, cur.names[j])
			switch {
			case cur.subs[j] == nil:
				if prev.own[i] != cur.own[j] {
					file(p) // rsync replaces whatever the receiver has there
				}
			case prev.subs[i] == nil:
				c.added(p, cur.subs[j]) // a directory where something else was
			default:
				if prev.own[i] != cur.own[j] {
					c.add(contents(p))
				}
				if prev.subs[i].sum != cur.subs[j].sum {
					c.dir(p, prev.subs[i], cur.subs[j])
				}
			}
			i++
			j++
		}
	}
}

// added lists an entry new at rel: a non-directory by its path, a
// directory by its contents and those of every directory below it.
func (c *changes) added(rel string, d *dir) {
	if d == nil {
		c.add(rel)
		return
	}
	c.add(contents(rel))
	for k, name := range d.names {
		if d.subs[k] != nil {
			c.added(join(rel, name), d.subs[k])
		}
	}
}

// contents is rsync's files-from name for a directory's entries.
func contents(rel string) string {
	if rel == "" {
		return Root
	}
	return rel + "/."
}

func parent(rel string) string {
	if i := strings.LastIndexByte(rel, '/'); i >= 0 {
		return rel[:i]
	}
	return ""
}

func join(rel, name string) string {
	if rel == "" {
		return name
	}
	return rel + "/" + name
}
