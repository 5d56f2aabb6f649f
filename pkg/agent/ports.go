package agent

import (
	"fmt"
	"strconv"
	"strings"
)

// PortRange is where destinations' ssh listeners take their ports, so that
// node firewalls can allow exactly that range. The zero value lets the
// kernel choose.
type PortRange struct{ Min, Max int32 }

// ParsePortRange reads "MIN-MAX" ("" or "0": any port the kernel gives).
func ParsePortRange(s string) (PortRange, error) {
	if s == "" || s == "0" {
		return PortRange{}, nil
	}
	lo, hi, ok := strings.Cut(s, "-")
	a, err1 := strconv.ParseInt(lo, 10, 32)
	b, err2 := strconv.ParseInt(hi, 10, 32)
	if !ok || err1 != nil || err2 != nil || a < 1 || b > 65535 || a > b {
		return PortRange{}, fmt.Errorf("port range %q: want MIN-MAX within 1-65535, such as 30500-30999", s)
	}
	return PortRange{Min: int32(a), Max: int32(b)}, nil
}

func (p PortRange) String() string {
	if p.Min == 0 {
		return "any"
	}
	return fmt.Sprintf("%d-%d", p.Min, p.Max)
}

// Candidates are the ports to try, in order: the one a destination had
// before (the Service points there) if it is in the range, then the range
// from its start (or 0, the kernel's choice, without a range).
func (p PortRange) Candidates(prev int32) []int32 {
	if p.Min == 0 {
		if prev != 0 {
			return []int32{prev, 0}
		}
		return []int32{0}
	}
	out := make([]int32, 0, p.Max-p.Min+2)
	if prev >= p.Min && prev <= p.Max {
		out = append(out, prev)
	}
	for port := p.Min; port <= p.Max; port++ {
		if port != prev {
			out = append(out, port)
		}
	}
	return out
}
