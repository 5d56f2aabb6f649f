package sender

import (
	"encoding/binary"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/ferrysync/ferry/pkg/transfer/internal/algorithms"
	"github.com/ferrysync/ferry/pkg/transfer/internal/fault"
	"github.com/ferrysync/ferry/pkg/transfer/keepalive"
	"github.com/ferrysync/ferry/pkg/transfer/servercmd"
)

// connection is the ssh connection to the destination, opened on first use
// and again after it breaks.
type connection struct {
	opts   *Options
	client *ssh.Client
	// alive watches client (keepalive).
	alive *keepalive.Watcher
}

// request sends a global request that the destination may take long to
// answer (it sums its volume first), holding the keepalive count meanwhile.
func (c *connection) request(client *ssh.Client, name string, payload []byte) (bool, []byte, error) {
	defer c.alive.Busy()()
	return client.SendRequest(name, true, payload)
}

func (c *connection) get() (*ssh.Client, error) {
	if c.client != nil {
		if _, _, err := c.client.SendRequest("keepalive@openssh.com", true, nil); err == nil {
			return c.client, nil
		}
		c.close()
	}
	cfg := &ssh.ClientConfig{
		User:              c.opts.User,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(c.opts.Keys.Identity)},
		HostKeyCallback:   ssh.FixedHostKey(c.opts.Keys.HostKey),
		HostKeyAlgorithms: []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA},
		Timeout:           30 * time.Second,
	}
	algorithms.Apply(&cfg.Config)
	if algo := c.opts.Keys.HostKey.Type(); algo != ssh.KeyAlgoRSA {
		cfg.HostKeyAlgorithms = []string{algo}
	}
	addr := net.JoinHostPort(c.opts.Address, strconv.Itoa(c.opts.Port))
	if err := fault.At(fault.Dial); err != nil {
		return nil, fmt.Errorf("connect to destination %s: %w", addr, err)
	}
	client, err := ssh.Dial("tcp", addr, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to destination %s: %w", addr, err)
	}
	c.client = client
	c.alive = keepalive.Watch(client, c.opts.Keepalive)
	return client, nil
}

// shutdown tells the destination the sync ended with result code. It
// fails when the destination does not count the sync as the source does
// (it saw no transfer complete, or one still wrote): its reply says why.
func (c *connection) shutdown(code int) error {
	client, err := c.get()
	if err != nil {
		return err
	}
	if err := fault.At(fault.Shutdown); err != nil {
		return fmt.Errorf("shutdown %d: %w", code, err)
	}
	sess, err := client.NewSession()
	if err != nil {
		return fmt.Errorf("open session for shutdown: %w", err)
	}
	defer sess.Close()
	if out, err := sess.CombinedOutput("shutdown " + strconv.Itoa(code)); err != nil {
		return fmt.Errorf("shutdown %d: %w: %s", code, err, out)
	}
	return nil
}

// noSpace tells the destination, before the sync's shutdown, that its
// volume ran out of space and how much the source's volume uses
// (servercmd.NoSpaceRequest). It is advice for the destination's message:
// nothing fails without it.
func (c *connection) noSpace(volume string, log logr.Logger) {
	var st unix.Statfs_t
	if err := unix.Statfs(volume, &st); err != nil {
		log.Info("could not measure the volume for the destination", "error", err.Error())
		return
	}
	client, err := c.get()
	if err != nil {
		return // shutdown reports it
	}
	used := (st.Blocks - st.Bfree) * uint64(st.Bsize)
	_, _, _ = client.SendRequest(servercmd.NoSpaceRequest, false, binary.BigEndian.AppendUint64(nil, used))
}

func (c *connection) close() {
	if c.client != nil {
		_ = c.client.Close()
		c.client = nil
	}
}
