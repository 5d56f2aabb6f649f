package keys

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
