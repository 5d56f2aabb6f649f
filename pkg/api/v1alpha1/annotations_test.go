package v1alpha1_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
)

func TestBandwidthLimitAnnotation(t *testing.T) {
	cases := map[string]struct {
		value string
		set   bool
		want  int64
		err   string
	}{
		"none":                {want: 0},
		"binary units":        {value: "10Mi", set: true, want: 10 << 20},
		"decimal units":       {value: "500k", set: true, want: 500_000},
		"plain bytes":         {value: "65536", set: true, want: 65536},
		"not a quantity":      {value: "fast", set: true, err: `"fast" is not a rate`},
		"zero is no rate":     {value: "0", set: true, err: `"0" is not a rate`},
		"negative":            {value: "-1Mi", set: true, err: "positive quantity"},
		"empty but annotated": {value: "", set: true, err: `"" is not a rate`},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			annotations := map[string]string{"other": "x"}
			if tc.set {
				annotations[volsyncv1alpha1.BandwidthLimitAnnotation] = tc.value
			}
			got, err := volsyncv1alpha1.BandwidthLimit(annotations)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}
