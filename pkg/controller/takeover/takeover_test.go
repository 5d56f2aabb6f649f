package takeover

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

func TestShortName(t *testing.T) {
	assert.Equal(t, "volsync-rsync-dst-db", ShortName("volsync-rsync-dst-", "db"))
	long := strings.Repeat("a", 46) // 18 + 46 = 64 > 63
	got := ShortName("volsync-rsync-dst-", long)
	assert.Equal(t, "volsync-rsync-dst-", got[:18])
	assert.Len(t, got, 18+8, "prefix and eight hex digits")
	assert.Equal(t, "volsync-rsync-dst-"+strings.Repeat("a", 45), ShortName("volsync-rsync-dst-", strings.Repeat("a", 45)), "63 fits")
	// VolSync's value for this name (crc32.ChecksumIEEE of "a"*46 in %08x)
	// is what a long-named CR's Service is called.
	assert.Equal(t, ShortName("volsync-rsync-src-", long)[18:], got[18:], "the hash depends on the name only")
}

func TestDecide(t *testing.T) {
	const uid = "u1"
	owned := func(mods ...func(*batchv1.Job)) *batchv1.Job {
		j := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{OwnerReferences: []metav1.OwnerReference{{UID: types.UID(uid), Controller: ptr.To(true)}}}}
		for _, m := range mods {
			m(j)
		}
		return j
	}
	cond := func(typ batchv1.JobConditionType, s corev1.ConditionStatus) func(*batchv1.Job) {
		return func(j *batchv1.Job) {
			j.Status.Conditions = append(j.Status.Conditions, batchv1.JobCondition{Type: typ, Status: s})
		}
	}
	for _, tc := range []struct {
		name string
		job  *batchv1.Job
		want Action
	}{
		{"none", nil, None},
		{"running", owned(func(j *batchv1.Job) { j.Status.Active = 1 }), Wait},
		{"pending, no pod yet", owned(), Wait},
		{"complete", owned(cond(batchv1.JobComplete, corev1.ConditionTrue)), Remove},
		{"failed for good", owned(cond(batchv1.JobFailed, corev1.ConditionTrue)), Remove},
		{"a condition not yet true", owned(cond(batchv1.JobComplete, corev1.ConditionFalse)), Wait},
		{"paused by VolSync, no pod", owned(func(j *batchv1.Job) { j.Spec.Parallelism = ptr.To(int32(0)) }), Remove},
		{"paused, its pod still ending", owned(func(j *batchv1.Job) { j.Spec.Parallelism = ptr.To(int32(0)); j.Status.Active = 1 }), Wait},
		{"another CR's (same name, recreated CR)", &batchv1.Job{ObjectMeta: metav1.ObjectMeta{OwnerReferences: []metav1.OwnerReference{{UID: "other", Controller: ptr.To(true)}}}}, None},
		{"being deleted", owned(func(j *batchv1.Job) { j.DeletionTimestamp = ptr.To(metav1.Now()) }), Wait},
	} {
		t.Run(tc.name, func(t *testing.T) { assert.Equal(t, tc.want, Decide(tc.job, uid)) })
	}
}
