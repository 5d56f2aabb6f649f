package destination

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestDecideVolume(t *testing.T) {
	bound := volumeFacts{bound: true}
	with := func(change func(*volumeFacts)) volumeFacts { f := bound; change(&f); return f }
	cases := map[string]struct {
		facts volumeFacts
		want  volumeAction
	}{
		"not bound yet":                      {volumeFacts{}, volumeWait},
		"not bound, even paused":             {volumeFacts{paused: true}, volumeWait},
		"bound, nothing in the way":          {bound, volumeAssign},
		"VolSync's mover still writes":       {with(func(f *volumeFacts) { f.mover = "VolSync's Job" }), volumeYield},
		"the mover goes first, also paused":  {with(func(f *volumeFacts) { f.mover = "x"; f.paused = true }), volumeYield},
		"cleanupTempPVC's cleanup":           {with(func(f *volumeFacts) { f.droppingClaim = true }), volumeLeave},
		"paused":                             {with(func(f *volumeFacts) { f.paused = true }), volumePause},
		"paused mid-transfer: it finishes":   {with(func(f *volumeFacts) { f.paused = true; f.transferring = true }), volumeAssign},
		"a pod wants the claim":              {with(func(f *volumeFacts) { f.users = 1 }), volumeLend},
		"a pod mid-transfer: it finishes":    {with(func(f *volumeFacts) { f.users = 2; f.transferring = true }), volumeAssign},
		"paused and a pod: paused wins":      {with(func(f *volumeFacts) { f.paused = true; f.users = 1 }), volumePause},
		"dropping the claim beats the pause": {with(func(f *volumeFacts) { f.droppingClaim = true; f.paused = true }), volumeLeave},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, decideVolume(tc.facts))
		})
	}
}
