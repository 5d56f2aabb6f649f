package source

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestDecideCopy(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	since := now.Add(-time.Minute).Format(time.RFC3339)
	on := UseCopyTriggerAnnotation
	for name, tc := range map[string]struct {
		ann  map[string]string
		want copyGate
	}{
		"no copy triggers: take it": {ann: nil, want: copyGate{Take: true}},
		"first wait: say so, and since when": {ann: map[string]string{on: "true"},
			want: copyGate{Since: now, Set: map[string]string{LatestCopyStatusAnnotation: CopyStatusWaitingForTrigger,
				LatestCopyWaitingSinceAnnotation: now.Format(time.RFC3339)}}},
		"still waiting: nothing to write": {ann: map[string]string{on: "true", LatestCopyStatusAnnotation: CopyStatusWaitingForTrigger,
			LatestCopyWaitingSinceAnnotation: since}, want: copyGate{Since: now.Add(-time.Minute)}},
		"waited past the timeout": {ann: map[string]string{on: "true", LatestCopyStatusAnnotation: CopyStatusWaitingForTrigger,
			LatestCopyWaitingSinceAnnotation: now.Add(-11 * time.Minute).Format(time.RFC3339)},
			want: copyGate{Since: now.Add(-11 * time.Minute), TimedOut: true}},
		"the trigger value already used: wait": {ann: map[string]string{on: "true", CopyTriggerAnnotation: "a",
			LatestCopyTriggerAnnotation: "a", LatestCopyStatusAnnotation: CopyStatusCompleted},
			want: copyGate{Since: now, Set: map[string]string{LatestCopyStatusAnnotation: CopyStatusWaitingForTrigger,
				LatestCopyWaitingSinceAnnotation: now.Format(time.RFC3339)}}},
		"a new trigger value: take it, in progress": {ann: map[string]string{on: "true", CopyTriggerAnnotation: "b",
			LatestCopyTriggerAnnotation: "a", LatestCopyStatusAnnotation: CopyStatusWaitingForTrigger, LatestCopyWaitingSinceAnnotation: since},
			want: copyGate{Take: true, Set: map[string]string{LatestCopyStatusAnnotation: CopyStatusInProgress, LatestCopyWaitingSinceAnnotation: ""}}},
		"in progress: go on": {ann: map[string]string{on: "true", CopyTriggerAnnotation: "b", LatestCopyStatusAnnotation: CopyStatusInProgress},
			want: copyGate{Take: true}},
	} {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, decideCopy(tc.ann, now, DefaultCopyTriggerTimeout))
		})
	}
}

func TestCopyTaken(t *testing.T) {
	assert.Nil(t, copyTaken(nil), "no copy triggers")
	assert.Nil(t, copyTaken(map[string]string{UseCopyTriggerAnnotation: "", LatestCopyStatusAnnotation: CopyStatusCompleted}), "already recorded")
	assert.Equal(t, map[string]string{LatestCopyTriggerAnnotation: "b", LatestCopyStatusAnnotation: CopyStatusCompleted},
		copyTaken(map[string]string{UseCopyTriggerAnnotation: "true", CopyTriggerAnnotation: "b", LatestCopyStatusAnnotation: CopyStatusInProgress}))
}
