package sshkeys

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/ssh"
)

func TestSecretsRoundTrip(t *testing.T) {
	if testing.Short() {
		t.Skip("generates two 4096-bit RSA keys")
	}
	dst, src, err := Secrets()
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{"destination", "destination.pub", "source.pub"}, keysOf(dst))
	assert.ElementsMatch(t, []string{"source", "source.pub", "destination.pub"}, keysOf(src))
	assert.True(t, strings.HasPrefix(string(src["source"]), "-----BEGIN OPENSSH PRIVATE KEY-----"))
	assert.True(t, strings.HasPrefix(string(dst["destination.pub"]), "ssh-rsa "))

	d, err := ParseDestination(dst)
	require.NoError(t, err)
	s, err := ParseSource(src)
	require.NoError(t, err)
	assert.Equal(t, d.HostKey.PublicKey().Marshal(), s.HostKey.Marshal(), "the source pins the destination's host key")
	assert.Equal(t, s.Identity.PublicKey().Marshal(), d.Authorized.Marshal(), "the destination lets in the source's key")
	assert.Equal(t, ssh.KeyAlgoRSA, d.HostKey.PublicKey().Type())
}

func TestParseErrorsNameTheField(t *testing.T) {
	_, err := ParseSource(map[string][]byte{"destination.pub": []byte("ssh-rsa AAAA")})
	assert.ErrorContains(t, err, `field "source" is missing`)
	_, err = ParseDestination(map[string][]byte{"destination": []byte("not a key"), "source.pub": []byte("x")})
	assert.ErrorContains(t, err, `field "destination" is not an unencrypted ssh private key`)
	assert.NotContains(t, err.Error(), "not a key", "key material never appears in errors")
}

func keysOf(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
