package keys

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ferrysync/ferry/pkg/transfer/sshkeys"
)

func TestCheck(t *testing.T) {
	dst, src, err := sshkeys.Secrets()
	require.NoError(t, err)
	assert.NoError(t, Check(dst, Destination))
	assert.NoError(t, Check(src, Source))

	err = Check(dst, Source)
	require.ErrorIs(t, err, ErrInvalid)
	assert.ErrorContains(t, err, `missing or empty field(s) source (a source Secret needs source, source.pub, destination.pub)`)

	broken := map[string][]byte{"destination": []byte("not a key"), "destination.pub": dst["destination.pub"], "source.pub": dst["source.pub"]}
	err = Check(broken, Destination)
	require.ErrorIs(t, err, ErrInvalid)
	assert.ErrorContains(t, err, `field "destination" is not an unencrypted ssh private key`)
	assert.NotContains(t, err.Error(), "not a key", "no key material in messages")
}

func TestNames(t *testing.T) {
	d := NamesFor(Destination, "db")
	assert.Equal(t, Names{Main: "volsync-rsync-dst-main-db", Source: "volsync-rsync-dst-src-db", Destination: "volsync-rsync-dst-dest-db"}, d)
	assert.Equal(t, "volsync-rsync-dst-src-db", d.Published(Destination))
	s := NamesFor(Source, "db")
	assert.Equal(t, "volsync-rsync-src-dest-db", s.Published(Source))
}

// TestRecent: the reconciles of a sync in flight prepare the keys once; a
// new generation, the interval passing, a failure and Forget each make the
// next reconcile prepare them again.
func TestRecent(t *testing.T) {
	now := time.Unix(1000, 0)
	r := &Recent{Every: 30 * time.Second, Now: func() time.Time { return now }}
	owner := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{UID: "u", Generation: 1}}
	runs := 0
	published := "published"
	ok := func() (*string, error) { runs++; return &published, nil }
	fail := func() (*string, error) { runs++; return nil, ErrInvalid }

	steps := []struct {
		name    string
		before  func()
		prepare func() (*string, error)
		runs    int
		err     bool
	}{
		{"first", nil, ok, 1, false},
		{"again at once", nil, ok, 1, false},
		{"just before the interval", func() { now = now.Add(29 * time.Second) }, ok, 1, false},
		{"the interval passed", func() { now = now.Add(time.Second) }, ok, 2, false},
		{"the spec changed", func() { owner.Generation = 2 }, ok, 3, false},
		{"failing", func() { owner.Generation = 3 }, fail, 4, true},
		{"after a failure", nil, fail, 5, true},
		{"then succeeding", nil, ok, 6, false},
		{"forgotten", func() { r.Forget("u") }, ok, 7, false},
		{"held", nil, ok, 7, false},
	}
	for _, s := range steps {
		if s.before != nil {
			s.before()
		}
		got, err := r.Prepare(owner, s.prepare)
		assert.Equal(t, s.runs, runs, s.name)
		if s.err {
			assert.ErrorIs(t, err, ErrInvalid, s.name)
			continue
		}
		require.NoError(t, err, s.name)
		assert.Equal(t, &published, got, s.name)
	}
}

// TestCheckRemembersWhatParsed: key material that parsed once is not parsed
// again; a change of any field is checked anew, and a bad key is never
// taken for a good one.
func TestCheckRemembersWhatParsed(t *testing.T) {
	dst, _, err := sshkeys.Secrets()
	require.NoError(t, err)
	require.NoError(t, Check(dst, Destination))
	assert.True(t, parsed.has(digest(dst, Destination)))
	broken := map[string][]byte{}
	for k, v := range dst {
		broken[k] = v
	}
	broken[sshkeys.DestinationPrivate] = []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n-----END OPENSSH PRIVATE KEY-----\n")
	assert.False(t, parsed.has(digest(broken, Destination)))
	assert.ErrorIs(t, Check(broken, Destination), ErrInvalid)
	assert.NotEqual(t, digest(dst, Destination), digest(dst, Source), "each side's fields are its own")
}
