// Package names fits the names and label values Ferry derives from a CR's
// name within the API's limits. A CR's name may be 253 characters long;
// an object name derived from it with a prefix or suffix, or a label value
// (63), may not. Like VolSync, Ferry then keeps the start of the name and
// ends it with a hash of the whole, so a CR of any valid name syncs, two
// long names that differ past the cut stay apart, and the result is the
// same on every pass (the controller finds what it made before).
package names

import (
	"fmt"
	"hash/crc32"
	"strings"
)

// The API's limits.
const (
	// MaxObject is the longest name of a Secret, claim or snapshot (a DNS
	// subdomain).
	MaxObject = 253
	// MaxLabel is the longest label value.
	MaxLabel = 63
)

// hashLen is the length of the hash Fit ends a shortened name with.
const hashLen = 8

// Fit returns s when it is at most max characters long, and otherwise its
// start, a hyphen and the CRC-32 of all of s in hex, max characters in
// all. The start loses trailing hyphens and dots, so the result still
// begins and ends with an alphanumeric character, as names and label
// values must.
func Fit(s string, max int) string {
	if len(s) <= max {
		return s
	}
	head := strings.TrimRight(s[:max-hashLen-1], "-.")
	return fmt.Sprintf("%s-%0*x", head, hashLen, crc32.ChecksumIEEE([]byte(s)))
}

// Object is prefix+name+suffix fitted to an object name.
func Object(prefix, name, suffix string) string { return Fit(prefix+name+suffix, MaxObject) }

// Label is a label value for v (a CR's name).
func Label(v string) string { return Fit(v, MaxLabel) }
