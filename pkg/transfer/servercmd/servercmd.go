// Package servercmd decides what an ssh client may run on a destination
// endpoint: the rsync server command that a stock rsync client sends for a
// push, or VolSync's `shutdown N`, and nothing else.
//
// The rules follow rsync's own rrsync in spirit, for a write-only endpoint
// rooted at one volume: only a receiving `rsync --server` is accepted; options
// that would read or write outside the volume (--log-file, batch files,
// --files-from a server path, --temp-dir and friends outside the root),
// options that only make sense for a sender (--remove-source-files), and the
// options that follow symlinked directories on the receiver (-K, -L, -k) are
// refused with a message naming the option; anything not known to be safe is
// refused too. Paths are made relative to the root and may not contain "..".
//
// This is the first of two fences. The rsync that runs the accepted command
// is also confined (package confine) so that even a hostile sender that gets
// past these checks cannot reach outside the volume.
package servercmd

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"
)

// Request is an accepted command: *Rsync or Shutdown.
type Request interface{ request() }

// Rsync is an accepted rsync receiver command.
type Rsync struct {
	// Options are the validated server options, starting with "--server".
	Options []string
	// Paths are the destination paths, relative to the root, cleaned, never
	// containing "..". At least one ("." when the client sent none).
	Paths []string
}

// Args is the argument list for the rsync binary, as rrsync runs it:
// options, "--", ".", paths.
func (r *Rsync) Args() []string {
	args := append([]string{}, r.Options...)
	args = append(args, "--", ".")
	return append(args, r.Paths...)
}

// Shutdown is VolSync's end-of-sync message: the source's sync ended with
// result Code (0 means success).
type Shutdown struct {
	// Code is the sync's result as the source reports it.
	Code int
}

func (*Rsync) request()   {}
func (Shutdown) request() {}

// RefusedError says why a command was refused, in words for the client.
type RefusedError struct{ Reason string }

func (e *RefusedError) Error() string { return "refused: " + e.Reason }

func refuse(format string, a ...any) error {
	return &RefusedError{Reason: fmt.Sprintf(format, a...)}
}

// optKind says how a long option's argument is checked.
type optKind int

const (
	noArg     optKind = iota // a flag
	anyArg                   // an argument that cannot name a path
	inRootArg                // a path that must stay inside the root
	dashArg                  // only "-" (read from the protocol stream)
	allocArg                 // a size that keeps rsync's allocation limit
)

// maxAlloc is the most a client may set --max-alloc to: rsync's own
// default. The limit bounds what a hostile peer can make the receiver
// allocate; 0 (no limit) or more is refused.
const maxAlloc = 1 << 30

// longOptions are the long options a receiving server accepts. Anything else
// is refused.
var longOptions = map[string]optKind{
	"append": noArg, "copy-unsafe-links": noArg, "delay-updates": noArg, "delete": noArg,
	"delete-after": noArg, "delete-before": noArg, "delete-delay": noArg, "delete-during": noArg,
	"delete-excluded": noArg, "delete-missing-args": noArg, "existing": noArg, "fake-super": noArg,
	"force": noArg, "from0": noArg, "fsync": noArg, "fuzzy": noArg, "group": noArg, "hard-links": noArg,
	"ignore-errors": noArg, "ignore-existing": noArg, "ignore-missing-args": noArg, "ignore-times": noArg,
	"inplace": noArg, "links": noArg, "list-only": noArg, "mkpath": noArg, "msgs2stderr": noArg,
	"munge-links": noArg, "new-compress": noArg, "no-W": noArg, "no-implied-dirs": noArg,
	"no-msgs2stderr": noArg, "no-r": noArg, "no-relative": noArg, "no-specials": noArg, "numeric-ids": noArg,
	"old-compress": noArg, "one-file-system": noArg, "open-noatime": noArg, "owner": noArg, "partial": noArg,
	"perms": noArg, "preallocate": noArg, "recursive": noArg, "safe-links": noArg, "size-only": noArg,
	"specials": noArg, "stats": noArg, "super": noArg, "times": noArg, "use-qsort": noArg,

	"block-size": anyArg, "bwlimit": anyArg, "checksum-choice": anyArg, "checksum-seed": anyArg,
	"compress-choice": anyArg, "compress-level": anyArg, "compress-threads": anyArg,
	"groupmap": anyArg, "iconv": anyArg, "info": anyArg, "log-format": anyArg, "max-alloc": allocArg,
	"max-delete": anyArg, "max-size": anyArg, "min-size": anyArg, "modify-window": anyArg,
	"skip-compress": anyArg, "stderr": anyArg, "suffix": anyArg, "timeout": anyArg, "usermap": anyArg,

	"backup-dir": inRootArg, "compare-dest": inRootArg, "copy-dest": inRootArg, "link-dest": inRootArg,
	"partial-dir": inRootArg, "temp-dir": inRootArg,

	"files-from": dashArg,
}

// refusedWhy explains the refusal of options a client might plausibly send.
var refusedWhy = map[string]string{
	"sender":              "this endpoint only receives",
	"log-file":            "it writes a file outside the volume",
	"write-batch":         "it writes a file outside the volume",
	"only-write-batch":    "it writes a file outside the volume",
	"read-batch":          "it reads a file outside the volume",
	"remove-source-files": "it only applies to a sender",
	"remove-sent-files":   "it only applies to a sender",
	"copy-devices":        "it reads devices",
	"write-devices":       "it writes through devices",
	"no-munge-links":      "it is disabled on this endpoint",
	"daemon":              "this endpoint is not an rsync daemon",
	"secluded-args":       "arguments must be visible to the endpoint's checks",
	"protect-args":        "arguments must be visible to the endpoint's checks",
	"keep-dirlinks":       "it follows symlinked directories on the receiver",
	"copy-links":          "it follows symlinks",
	"copy-dirlinks":       "it follows symlinked directories",
	"debug":               "it reports the server's internals to the client (rrsync refuses it too)",
}

var (
	// shortFlags are the short options (clusters) a receiving server
	// accepts, optionally ending in the protocol's "e.xxx" compat string.
	// Not accepted: s (secluded args), K, L, k (follow symlinked dirs).
	shortFlags = regexp.MustCompile(`^-[ACDEHIJNORSUWXbcdglmnopqrtuvxyz]*(e\d*\.\w*)?$`)
	// shortNum are the short options with a number attached: the modify
	// window (-1: compare nanoseconds) and the block size.
	shortNum = regexp.MustCompile(`^-(@-?\d+|B\d+)$`)
	// shortRefused finds the first refused letter of a cluster.
	shortRefused = regexp.MustCompile(`^-[ACDEHIJNORSUWXbcdglmnopqrtuvxyz]*([sKLk])`)
	shortWhy     = map[string]string{"s": "secluded-args", "K": "keep-dirlinks", "L": "copy-links", "k": "copy-dirlinks"}
)

// Parse checks an ssh exec request's command line and returns what to run.
// A refused command gives a *RefusedError whose reason can be shown to the
// client.
func Parse(line string) (Request, error) {
	words, err := split(line)
	if err != nil {
		return nil, err
	}
	if len(words) == 0 {
		return nil, refuse("empty command; this endpoint accepts only rsync --server and shutdown N")
	}
	switch words[0] {
	case "shutdown":
		return parseShutdown(words)
	case "rsync":
		return parseRsync(words)
	default:
		return nil, refuse("command %q not allowed; this endpoint accepts only rsync --server and shutdown N", words[0])
	}
}

func parseShutdown(words []string) (Request, error) {
	if len(words) != 2 {
		return nil, refuse("usage: shutdown N")
	}
	code, err := strconv.Atoi(words[1])
	if err != nil || code < 0 || code > 255 {
		return nil, refuse("shutdown needs an exit code from 0 to 255, not %q", words[1])
	}
	return Shutdown{Code: code}, nil
}

func parseRsync(words []string) (Request, error) {
	if len(words) < 2 || words[1] != "--server" {
		return nil, refuse("only rsync --server is allowed (--server must be the first argument)")
	}
	r := &Rsync{Options: []string{"--server"}}
	i := 2
	for ; i < len(words) && words[i] != "."; i++ {
		w := words[i]
		if w == "-" {
			return nil, refuse("a bare \"-\" argument is not allowed")
		}
		if shortFlags.MatchString(w) || shortNum.MatchString(w) {
			r.Options = append(r.Options, w)
			continue
		}
		if m := shortRefused.FindStringSubmatch(w); m != nil {
			name := shortWhy[m[1]]
			return nil, refuse("option -%s (--%s) is not allowed: %s", m[1], name, refusedWhy[name])
		}
		if !strings.HasPrefix(w, "--") {
			return nil, refuse("option %q is not allowed", w)
		}
		name, value, hasValue := strings.Cut(w[2:], "=")
		kind, ok := longOptions[name]
		if !ok {
			if why, known := refusedWhy[name]; known {
				return nil, refuse("option --%s is not allowed: %s", name, why)
			}
			return nil, refuse("option --%s is not allowed", name)
		}
		if kind == noArg {
			if hasValue {
				return nil, refuse("option --%s takes no argument", name)
			}
			r.Options = append(r.Options, w)
			continue
		}
		if !hasValue {
			if i+1 >= len(words) {
				return nil, refuse("option --%s needs an argument", name)
			}
			i++
			value = words[i]
		}
		checked, err := checkOptionArg(name, kind, value)
		if err != nil {
			return nil, err
		}
		r.Options = append(r.Options, "--"+name+"="+checked)
	}
	if i >= len(words) {
		return nil, refuse("invalid rsync server command: no \".\" argument")
	}
	for _, p := range words[i+1:] {
		if p == "-" {
			return nil, refuse("a bare \"-\" argument is not allowed")
		}
		clean, err := inRoot(p)
		if err != nil {
			return nil, err
		}
		r.Paths = append(r.Paths, clean)
	}
	if len(r.Paths) == 0 {
		r.Paths = []string{"."}
	}
	return r, nil
}

func checkOptionArg(name string, kind optKind, value string) (string, error) {
	switch kind {
	case inRootArg:
		clean, err := inRoot(value)
		if err != nil {
			return "", refuse("option --%s: %s", name, err.(*RefusedError).Reason)
		}
		return clean, nil
	case dashArg:
		if value != "-" {
			return "", refuse("option --%s=%s is not allowed: the endpoint does not read its own files; send the list (--files-from=-)", name, value)
		}
	case allocArg:
		if n, ok := parseSize(value); !ok || n <= 0 || n > maxAlloc {
			return "", refuse("option --%s=%s is not allowed: it must be a size from 1 to 1G (rsync's default); 0 would lift the limit", name, value)
		}
	}
	return value, nil
}

// parseSize reads an rsync size: a number with an optional K, M or G
// suffix (powers of 1024; "b" or "B" after it allowed).
func parseSize(s string) (int64, bool) {
	s = strings.TrimSuffix(strings.TrimSuffix(s, "b"), "B")
	mult := int64(1)
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'k', 'K':
			mult, s = 1<<10, s[:n-1]
		case 'm', 'M':
			mult, s = 1<<20, s[:n-1]
		case 'g', 'G':
			mult, s = 1<<30, s[:n-1]
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 || v > (1<<62)/mult {
		return 0, false
	}
	return v * mult, true
}

// inRoot makes a client path relative to the root: a leading "/" means the
// root itself, and ".." is refused rather than resolved.
func inRoot(p string) (string, error) {
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return "", refuse("path %q: do not use .. (paths start at the root of the volume)", p)
		}
	}
	clean := strings.TrimLeft(path.Clean("/"+p), "/")
	if clean == "" {
		clean = "."
	}
	if strings.HasSuffix(p, "/") && clean != "." {
		clean += "/"
	}
	return clean, nil
}

// split splits a command line the way rsync escapes it: words separated by
// spaces, a backslash quoting the next character.
func split(line string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\\':
			if i+1 >= len(line) {
				return nil, refuse("command ends in a backslash")
			}
			i++
			cur.WriteByte(line[i])
			inWord = true
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == 0 || c == '\n':
			return nil, refuse("command contains a control character")
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// IsRefused reports whether err is a refusal (as opposed to an internal
// failure).
func IsRefused(err error) bool {
	var r *RefusedError
	return errors.As(err, &r)
}

// NoSpaceRequest is the global ssh request a Ferry source sends, before
// `shutdown N`, when a try of the sync failed because the destination's
// volume ran out of space: its payload is how many bytes the source's
// volume uses, as 8 bytes big-endian, so that the destination can say
// how much its claim must hold. Nothing else rides on it: the
// destination trusts only the number, and words its message itself. A
// stock sshd answers false and the sync fails as any other.
const NoSpaceRequest = "no-space@ferrysync.io"

// NoSpace says whether rsync's error output tells of a destination that
// ran out of space (ENOSPC, or a quota: EDQUOT).
func NoSpace(stderr string) bool {
	return strings.Contains(stderr, "No space left on device") || strings.Contains(stderr, "Disk quota exceeded")
}
