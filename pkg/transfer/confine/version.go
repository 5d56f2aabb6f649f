package confine

import (
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
)

// MinRsync is the oldest rsync Ferry runs: 3.5.0 fixes receiver heap
// writes reachable over the wire and bounds allocations (--max-alloc),
// which the endpoint relies on when a hostile peer sends.
var MinRsync = [3]int{3, 5, 0}

var rsyncVersion = regexp.MustCompile(`^rsync\s+version\s+v?(\d+)\.(\d+)\.(\d+)`)

// ParseRsyncVersion reads the version from the first line of
// `rsync --version`.
func ParseRsyncVersion(out string) ([3]int, error) {
	m := rsyncVersion.FindStringSubmatch(out)
	if m == nil {
		return [3]int{}, fmt.Errorf("not rsync's --version output: %.60q", out)
	}
	var v [3]int
	for i := range v {
		v[i], _ = strconv.Atoi(m[i+1])
	}
	return v, nil
}

// CheckRsync runs rsync --version (rsync "" is rsync from PATH) and refuses
// a version older than MinRsync, with a message that says what to install.
func CheckRsync(rsync string) error {
	if rsync == "" {
		rsync = "rsync"
	}
	out, err := exec.Command(rsync, "--version").Output()
	if err != nil {
		return fmt.Errorf("run %s --version: %w", rsync, err)
	}
	v, err := ParseRsyncVersion(string(out))
	if err != nil {
		return fmt.Errorf("%s: %w", rsync, err)
	}
	for i := range v {
		if v[i] != MinRsync[i] {
			if v[i] < MinRsync[i] {
				return fmt.Errorf("%s is rsync %d.%d.%d, older than %d.%d.%d, which fixes receiver heap writes a hostile peer can reach: install rsync %d.%d.%d or later (Debian 12: from bookworm-security)",
					rsync, v[0], v[1], v[2], MinRsync[0], MinRsync[1], MinRsync[2], MinRsync[0], MinRsync[1], MinRsync[2])
			}
			break
		}
	}
	return nil
}
