package csi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/go-logr/logr"

	"github.com/ferrysync/ferry/pkg/kubelet"
	"github.com/ferrysync/ferry/pkg/mount"
)

// Publisher publishes volumes for the agent under a root directory of its
// own, one directory per volume: <root>/<name>/{volume.json,stage,mount|device}.
// The paths are stable (never a pod's), so a restarted agent finds its
// mounts where it left them. Publishing and taking down are idempotent and
// may be repeated after a crash at any point; Recover takes down what is no
// longer wanted.
type Publisher struct {
	root, kubeletRoot string
	log               logr.Logger
	mounter           *mount.Mounter

	mu      sync.Mutex
	clients map[string]*Client
}

// NewPublisher returns a Publisher keeping its volumes under root and finding
// node plugins under kubeletRoot. The root must be where the node plugins see
// the same paths (below the kubelet root, which plugin containers mount with
// bidirectional propagation).
func NewPublisher(root, kubeletRoot string, log logr.Logger) *Publisher {
	return &Publisher{root: root, kubeletRoot: kubeletRoot, log: log, mounter: mount.New(), clients: map[string]*Client{}}
}

// DefaultRoot is the agent's directory under the kubelet root.
func DefaultRoot(kubeletRoot string) string {
	return filepath.Join(kubeletRoot, "plugins", "ferrysync.io", "volumes")
}

// Close drops the connections to node plugins.
func (p *Publisher) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for d, c := range p.clients {
		errs = append(errs, c.Close())
		delete(p.clients, d)
	}
	return errors.Join(errs...)
}

// Publish makes the volume available at the returned path: a directory, or
// a device file for a block volume. A volume published earlier under the
// same name in another way (read-write instead of read-only, another
// attachment, another volume) is taken down first.
func (p *Publisher) Publish(ctx context.Context, name string, v Volume) (string, error) {
	if err := checkName(name); err != nil {
		return "", err
	}
	if v.Reuse != "" && !v.ReadOnly {
		return "", fmt.Errorf("publish %s: reusing another mount is for read-only access only", name)
	}
	old, err := p.readRecord(name)
	if err != nil {
		return "", err
	}
	if old != nil && !old.matches(v) {
		p.log.Info("volume published differently before; taking it down first", "name", name)
		if err := p.run(ctx, name, p.teardownSteps(name, *old)); err != nil {
			return "", err
		}
	}
	if err := p.run(ctx, name, p.publishSteps(name, v)); err != nil {
		return "", err
	}
	return p.target(name, v.Block), nil
}

// Unpublish takes the volume down: unpublish, unstage, forget. Taking down
// what is not published succeeds.
func (p *Publisher) Unpublish(ctx context.Context, name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	rec, err := p.readRecord(name)
	if err != nil {
		return err
	}
	if rec == nil {
		return p.forgetOrphan(name)
	}
	return p.run(ctx, name, p.teardownSteps(name, *rec))
}

// Recover is for agent start: it takes down every volume under the root that
// keep does not claim, so that no mount survives a crash unless it is still
// wanted. Wanted volumes stay as they are; publishing them again completes
// whatever the crash interrupted.
func (p *Publisher) Recover(ctx context.Context, keep func(name string) bool) error {
	entries, err := os.ReadDir(p.root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list published volumes: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if !e.IsDir() || keep(e.Name()) {
			continue
		}
		p.log.Info("taking down a volume no assignment wants", "name", e.Name())
		if err := p.Unpublish(ctx, e.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (p *Publisher) client(ctx context.Context, driver string) (*Client, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.clients[driver]; c != nil {
		return c, nil
	}
	if err := kubelet.CheckName("driver", driver); err != nil {
		return nil, err
	}
	c, err := Dial(ctx, kubelet.PluginSocket(p.kubeletRoot, driver), p.log.WithValues("driver", driver))
	if err != nil {
		return nil, err
	}
	p.clients[driver] = c
	return c, nil
}

func (p *Publisher) target(name string, block bool) string {
	if block {
		return filepath.Join(p.root, name, "device")
	}
	return filepath.Join(p.root, name, "mount")
}

func (p *Publisher) stagePath(name string) string { return filepath.Join(p.root, name, "stage") }

// checkName keeps a volume name one safe path element.
func checkName(name string) error { return kubelet.CheckName("volume", name) }
