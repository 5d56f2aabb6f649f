// Package algorithms is the one list of ssh algorithms both ends of a Ferry
// transfer offer, so that the endpoint and the client cannot drift apart:
// AES-GCM first (hardware-accelerated; chacha20-poly1305 is slower in Go),
// then what stock OpenSSH peers (VolSync's mover) may insist on.
package algorithms

import "golang.org/x/crypto/ssh"

// Ciphers are offered in this order by Ferry's client and endpoint.
var Ciphers = []string{
	"aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
	"aes128-ctr", "aes192-ctr", "aes256-ctr",
}

// Apply sets the algorithm preferences on an ssh client or server config.
func Apply(c *ssh.Config) {
	c.Ciphers = Ciphers
}
