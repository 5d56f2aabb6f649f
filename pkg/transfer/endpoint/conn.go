package endpoint

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/crypto/ssh"

	"github.com/ferrysync/ferry/pkg/transfer/internal/algorithms"
	"github.com/ferrysync/ferry/pkg/transfer/internal/fault"
	"github.com/ferrysync/ferry/pkg/transfer/keepalive"
)

// serverConfig lets in exactly the destination's authorized key, with
// AES-GCM offered first (as fast as OpenSSH's on x86 with AES-NI).
func serverConfig(d Destination) *ssh.ServerConfig {
	want := d.Keys.Authorized.Marshal()
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if subtle.ConstantTimeCompare(key.Marshal(), want) == 1 {
				return &ssh.Permissions{}, nil
			}
			return nil, errors.New("key not authorized for this destination")
		},
		ServerVersion: "SSH-2.0-Ferry",
	}
	algorithms.Apply(&cfg.Config)
	cfg.AddHostKey(d.Keys.HostKey)
	return cfg
}

func (s *Server) accept(l *listener) {
	defer l.wg.Done()
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			if l.ctx.Err() == nil {
				s.log.Error(err, "accept failed; destination no longer served", "destination", l.dest.ID)
			}
			return
		}
		addr := peerAddr(conn)
		if cause := l.admitConn(s.limits, addr); cause != "" {
			s.refuse(cause)
			_ = conn.Close()
			continue
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer l.conns.Add(-1)
			s.serveConn(l, conn, addr)
		}()
	}
}

// serveConn serves a connection from peer address addr, admitted by
// admitConn, whose handshake token and peer share it gives back once the
// handshake is over.
func (s *Server) serveConn(l *listener, conn net.Conn, addr string) {
	log := s.log.WithValues("destination", l.dest.ID, "peer", conn.RemoteAddr().String())
	stop := context.AfterFunc(l.ctx, func() { _ = conn.Close() })
	defer stop()
	defer conn.Close()
	now := time.Now()
	_ = conn.SetDeadline(now.Add(s.limits.banner())) // until it speaks
	var sconn *ssh.ServerConn
	var chans <-chan ssh.NewChannel
	var reqs <-chan *ssh.Request
	err := fault.At(fault.Handshake)
	if err == nil {
		sconn, chans, reqs, err = ssh.NewServerConn(&bannerConn{Conn: conn, handshake: now.Add(s.limits.HandshakeTimeout)}, l.config)
	}
	<-l.handshakes
	l.peers.done(addr, err == nil)
	if err == nil {
		l.handshakeRate.give() // only failed handshakes count against the rate
	}
	if err != nil {
		log.V(1).Info("ssh handshake failed", "reason", err.Error())
		return
	}
	_ = conn.SetDeadline(time.Time{})
	log.V(1).Info("ssh connection", "user", sconn.User(), "client", string(sconn.ClientVersion()))
	keepalive.Watch(sconn, s.keepalive)
	go s.serveGlobal(l, log, reqs)
	var wg sync.WaitGroup
	var open atomic.Int32
	for nc := range chans {
		if nc.ChannelType() != "session" {
			_ = nc.Reject(ssh.Prohibited, "only session channels are served: this endpoint runs rsync, nothing else")
			continue
		}
		if int(open.Load()) >= s.limits.Channels {
			s.refuse(RefusedChannels) // counted before the peer can know
			_ = nc.Reject(ssh.ResourceShortage, fmt.Sprintf("at most %d channels at once per connection", s.limits.Channels))
			continue
		}
		ch, chReqs, err := nc.Accept()
		if err != nil {
			log.Info("accept channel failed", "reason", err.Error())
			continue
		}
		open.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer open.Add(-1)
			s.serveSession(l, log, ch, chReqs)
		}()
	}
	wg.Wait()
}

// exitStatus is the payload of an "exit-status" channel request.
type exitStatus struct{ Status uint32 }

// execPayload is the payload of an "exec" channel request.
type execPayload struct{ Command string }

func (s *Server) serveSession(l *listener, log logr.Logger, ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	for req := range reqs {
		switch req.Type {
		case "exec":
			var p execPayload
			if err := ssh.Unmarshal(req.Payload, &p); err != nil {
				_ = req.Reply(false, nil)
				continue
			}
			_ = req.Reply(true, nil)
			code := s.exec(l, log, ch, p.Command)
			_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(exitStatus{Status: uint32(code)}))
			return
		case "shell":
			_ = req.Reply(true, nil)
			fmt.Fprintln(ch.Stderr(), "ferry: no shell here; this endpoint accepts only rsync --server and shutdown N")
			emit(l, Event{Kind: Refused, Message: "shell request"})
			_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(exitStatus{Status: 1}))
			return
		default: // pty-req, env, subsystem, x11-req, agent forwarding, ...
			if req.WantReply {
				_ = req.Reply(false, nil)
			}
		}
	}
}
