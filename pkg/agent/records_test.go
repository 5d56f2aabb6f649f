package agent

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"k8s.io/apimachinery/pkg/types"
)

func TestRecords(t *testing.T) {
	a, b := types.NamespacedName{Namespace: "ferry-system", Name: "rs-a"}, types.NamespacedName{Namespace: "ferry-system", Name: "rs-b"}
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

	off := records{}
	assert.Nil(t, off.get(a, now), "full-sync interval 0: every sync runs in full, nothing kept")

	r := records{ttl: time.Hour}
	first := r.get(a, now)
	assert.NotNil(t, first)
	assert.Same(t, first, r.get(a, now.Add(50*time.Minute)), "every sync of a replication shares one record")
	assert.NotSame(t, first, r.get(b, now.Add(50*time.Minute)), "each replication has its own")
	assert.Same(t, first, r.get(a, now.Add(100*time.Minute)), "a record in use stays")
	r.get(b, now.Add(200*time.Minute))
	assert.Len(t, r.m, 1, "one unused past the interval is dropped (its replication deleted, or moved)")
	assert.NotSame(t, first, r.get(a, now.Add(200*time.Minute)))
}
