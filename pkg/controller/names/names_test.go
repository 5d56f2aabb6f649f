package names

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"k8s.io/apimachinery/pkg/util/validation"
)

func TestFit(t *testing.T) {
	long := strings.Repeat("a", 240)
	cases := map[string]struct {
		s    string
		max  int
		want string // "": shortened, checked by shape
	}{
		"short: as it is":   {s: "volsync-rd-dst", max: MaxObject, want: "volsync-rd-dst"},
		"exactly the limit": {s: strings.Repeat("b", 63), max: MaxLabel, want: strings.Repeat("b", 63)},
		"long label":        {s: long, max: MaxLabel},
		"long object":       {s: "volsync-rsync-dst-main-" + long, max: MaxObject},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got := Fit(tc.s, tc.max)
			if tc.want != "" {
				assert.Equal(t, tc.want, got)
				return
			}
			assert.Len(t, got, tc.max)
			assert.True(t, strings.HasPrefix(got, tc.s[:tc.max-hashLen-1]), "keeps the start")
			assert.Regexp(t, `-[0-9a-f]{8}$`, got, "ends with the hash")
		})
	}
}

func TestFitIsValidAndDistinct(t *testing.T) {
	// Names that differ only past the cut, and one whose cut ends on a hyphen.
	a := strings.Repeat("x", 60) + "-a" + strings.Repeat("y", 178)
	b := strings.Repeat("x", 60) + "-b" + strings.Repeat("y", 178)
	c := strings.Repeat("z", 53) + "-" + strings.Repeat("w", 186)
	for _, n := range []string{a, b, c} {
		assert.Empty(t, validation.IsValidLabelValue(Label(n)), n)
		assert.Empty(t, validation.IsDNS1123Subdomain(Object("volsync-rsync-dst-main-", n, "")), n)
		assert.Empty(t, validation.IsDNS1123Subdomain(Object("volsync-", n, "-dst")), n)
	}
	assert.NotEqual(t, Label(a), Label(b))
	assert.NotEqual(t, Object("p-", a, ""), Object("p-", b, ""))
	assert.Equal(t, Label(a), Label(a), "the same on every pass")
}
