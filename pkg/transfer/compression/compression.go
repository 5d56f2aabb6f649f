// Package compression says how a Ferry source's rsync compresses what it
// sends: one of rsync's --compress-choice algorithms at a level, or none,
// written as the user writes it in a ReplicationSource's annotation
// ("zstd", "zstd:3", "lz4", "zlib:6", "none").
//
// The default is zstd at level 3, what two rsync 3.5 peers negotiate for
// VolSync's -z: the same codec at the same level sends the same bytes as
// VolSync's mover for the same data (make bench, every case), so Ferry never
// puts more on the wire than the tool it replaces. Level 1 sent less on some
// data and more on other (docs/design.md); on incompressible data either
// costs next to nothing (zstd gives up on a block that does not shrink).
// rsync skips already-compressed files by their suffix (its built-in
// --skip-compress list) whatever the choice.
package compression

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Compression is an rsync compression algorithm and level.
type Compression struct {
	// Choice is an rsync --compress-choice: zstd, lz4, zlib, or none.
	Choice string
	// Level is --compress-level; 0 is the algorithm's own default.
	Level int
}

// Default is what a source uses unless its CR says otherwise.
var Default = Compression{Choice: "zstd", Level: 3}

// None sends data as it is.
var None = Compression{Choice: "none"}

// levels are the levels rsync accepts per algorithm (lz4 has none).
var levels = map[string][2]int{"zstd": {-131072, 22}, "zlib": {1, 9}}

// ErrInvalid marks a setting the user must fix.
var ErrInvalid = errors.New("invalid compression")

// Parse reads "choice[:level]"; "" is Default.
func Parse(s string) (Compression, error) {
	if s == "" {
		return Default, nil
	}
	choice, level, hasLevel := strings.Cut(s, ":")
	c := Compression{Choice: choice}
	switch choice {
	case "none", "lz4":
		if hasLevel {
			return c, fmt.Errorf("%w %q: %s takes no level", ErrInvalid, s, choice)
		}
		return c, nil
	case "zstd", "zlib":
	default:
		return c, fmt.Errorf("%w %q: want zstd, lz4, zlib or none, optionally zstd:LEVEL or zlib:LEVEL", ErrInvalid, s)
	}
	if !hasLevel {
		return c, nil
	}
	n, err := strconv.Atoi(level)
	r := levels[choice]
	if err != nil || n == 0 || n < r[0] || n > r[1] {
		return c, fmt.Errorf("%w %q: %s's level is a number from %d to %d, not 0", ErrInvalid, s, choice, r[0], r[1])
	}
	c.Level = n
	return c, nil
}

// String is the form Parse reads.
func (c Compression) String() string {
	if c.Level == 0 {
		return c.Choice
	}
	return fmt.Sprintf("%s:%d", c.Choice, c.Level)
}

// Args are the rsync options for c (none for None).
func (c Compression) Args() []string {
	if c.Choice == "none" || c.Choice == "" {
		return nil
	}
	args := []string{"-z", "--compress-choice=" + c.Choice}
	if c.Level != 0 {
		args = append(args, "--compress-level="+strconv.Itoa(c.Level))
	}
	return args
}
