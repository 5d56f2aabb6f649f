package keepalive

import (
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/ssh"
)

// pair connects an ssh client to a server over loopback whose answer to
// the global request "slow" takes delay; other requests it answers at
// once, and it stops answering anything once mute is closed.
func pair(t *testing.T, delay time.Duration, mute chan struct{}) *ssh.Client {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	signer, err := ssh.NewSignerFromKey(key)
	require.NoError(t, err)
	cfg := &ssh.ServerConfig{NoClientAuth: true}
	cfg.AddHostKey(signer)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		conn, chans, reqs, err := ssh.NewServerConn(c, cfg)
		if err != nil {
			return
		}
		t.Cleanup(func() { _ = conn.Close() })
		go ssh.DiscardRequests(nil)
		go func() {
			for ch := range chans {
				_ = ch.Reject(ssh.Prohibited, "no")
			}
		}()
		for req := range reqs {
			select {
			case <-mute:
				continue // a cut link: nothing comes back
			default:
			}
			if req.Type == "slow" {
				time.Sleep(delay)
			}
			_ = req.Reply(false, nil)
		}
	}()
	client, err := ssh.Dial("tcp", ln.Addr().String(), &ssh.ClientConfig{HostKeyCallback: ssh.InsecureIgnoreHostKey(), User: "x"})
	require.NoError(t, err)
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func closed(c *ssh.Client) func() bool {
	done := make(chan struct{})
	go func() { _ = c.Wait(); close(done) }()
	return func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	}
}

func TestSilentPeerIsCutOff(t *testing.T) {
	mute := make(chan struct{})
	c := pair(t, 0, mute)
	isClosed := closed(c)
	Watch(c, 50*time.Millisecond)
	time.Sleep(300 * time.Millisecond) // answered all along: still open
	require.False(t, isClosed(), "a peer that answers stays connected")
	close(mute)
	require.Eventually(t, isClosed, 5*time.Second, 10*time.Millisecond, "a silent peer is cut off")
}

func TestALongRequestOfOurOwnIsNoSilence(t *testing.T) {
	c := pair(t, 600*time.Millisecond, make(chan struct{}))
	isClosed := closed(c)
	w := Watch(c, 50*time.Millisecond)
	done := w.Busy()
	_, _, err := c.SendRequest("slow", true, nil) // keepalives queue behind it
	done()
	require.NoError(t, err, "the connection outlives a request answered after many intervals")
	require.False(t, isClosed())
}
