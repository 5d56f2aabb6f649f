// Package bytesize words byte counts for people, the one way the agent's
// messages and kubectl ferry write them: binary units, one decimal
// ("1.5 GiB"), up to PiB.
package bytesize

import "fmt"

// Format writes n bytes for people: 1.5 GiB.
func Format(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
