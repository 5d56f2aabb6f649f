package fresh_test

import (
	"context"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv/apiserver"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/fresh"
)

var env *apiserver.Env

const wait, tick = 10 * time.Second, 10 * time.Millisecond

func TestMain(m *testing.M) { os.Exit(apiserver.Main(m, &env)) }

// counting counts the reads that reach the apiserver.
type counting struct {
	client.Reader
	n atomic.Int64
}

func (c *counting) Get(ctx context.Context, k client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	c.n.Add(1)
	return c.Reader.Get(ctx, k, obj, opts...)
}

// TestReadsItsOwnWrites writes a CR's status and reads it back at once, as
// a reconcile that requeues right after its status write does, a few
// hundred times: the fresh client must return every write (a stale copy
// would replay a step), while the plain cache, read the same way, is seen
// to lag at least once (so the race is really run). Reads with no write of
// this process in between come from the cache.
func TestReadsItsOwnWrites(t *testing.T) {
	apiserver.Need(t, env)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	informers, err := cache.New(env.Config, cache.Options{Scheme: env.Scheme})
	require.NoError(t, err)
	go func() { _ = informers.Start(ctx) }()
	cached, err := client.New(env.Config, client.Options{Scheme: env.Scheme, Cache: &client.CacheOptions{Reader: informers}})
	require.NoError(t, err)
	api := &counting{Reader: env.Client}
	c := fresh.New(cached, api, &volsyncv1alpha1.ReplicationSource{})

	rs := &volsyncv1alpha1.ReplicationSource{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "fresh"},
		Spec: volsyncv1alpha1.ReplicationSourceSpec{SourcePVC: "data", Rsync: &volsyncv1alpha1.ReplicationSourceRsyncSpec{
			ReplicationSourceVolumeOptions: volsyncv1alpha1.ReplicationSourceVolumeOptions{CopyMethod: volsyncv1alpha1.CopyMethodDirect}}}}
	require.NoError(t, c.Create(ctx, rs))
	got := &volsyncv1alpha1.ReplicationSource{}
	require.NoError(t, c.Get(ctx, client.ObjectKeyFromObject(rs), got), "a read right after the create finds it")
	require.True(t, informers.WaitForCacheSync(ctx))

	write := func(i int) {
		t.Helper()
		before := rs.DeepCopy()
		rs.Status.LastManualSync = strconv.Itoa(i)
		require.NoError(t, c.Status().Patch(ctx, rs, client.MergeFrom(before)))
	}
	stale := 0
	for i := range 300 {
		write(2 * i)
		require.NoError(t, c.Get(ctx, client.ObjectKeyFromObject(rs), got))
		require.Equal(t, strconv.Itoa(2*i), got.Status.LastManualSync, "the fresh read returns the write just made")
		rs = got.DeepCopy()

		write(2*i + 1)
		plain := &volsyncv1alpha1.ReplicationSource{}
		require.NoError(t, cached.Get(ctx, client.ObjectKeyFromObject(rs), plain))
		if plain.Status.LastManualSync != strconv.Itoa(2*i+1) {
			stale++
		}
	}
	t.Logf("the plain cache returned an older copy in %d of 300 reads right after a write", stale)
	assert.Positive(t, stale, "the race this client closes was never run")

	// Once the cache has the last write, reads stay off the apiserver.
	require.Eventually(t, func() bool {
		plain := &volsyncv1alpha1.ReplicationSource{}
		return cached.Get(ctx, client.ObjectKeyFromObject(rs), plain) == nil && plain.ResourceVersion == rs.ResourceVersion
	}, wait, tick)
	require.NoError(t, c.Get(ctx, client.ObjectKeyFromObject(rs), got))
	before := api.n.Load()
	for range 50 {
		require.NoError(t, c.Get(ctx, client.ObjectKeyFromObject(rs), got))
	}
	assert.Equal(t, before, api.n.Load(), "reads without a write in between come from the cache")

	// Deleted: the read finds it gone.
	rs.Finalizers = nil
	require.NoError(t, c.Delete(ctx, rs, client.GracePeriodSeconds(0)))
	require.Eventually(t, func() bool {
		err := c.Get(ctx, client.ObjectKeyFromObject(rs), got)
		return client.IgnoreNotFound(err) == nil && err != nil
	}, wait, tick)
}
