package csi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/ferrysync/ferry/pkg/kubelet"
	"github.com/ferrysync/ferry/pkg/mount"
)

// Publisher publishes volumes for the agent under a root directory of its
// own, one directory per volume: <root>/<name>/{volume.json,mount|device}.
// The paths are stable (never a pod's), so a restarted agent finds its
// mounts where it left them. A volume is staged where kubelet stages it
// (kubelet.StagingPath), so that the node has one staging path per volume
// whoever stages it. Publishing and taking down are idempotent and may be
// repeated after a crash at any point; Recover takes down what is no
// longer wanted.
type Publisher struct {
	root        tree
	kubeletRoot string
	log         logr.Logger
	mounter     *mount.Mounter
	plugins     *kubelet.Plugins
	endpoints   map[string]string
	callTimeout time.Duration

	mu      sync.Mutex
	clients map[string]*Client
}

// Option tunes a Publisher.
type Option func(*Publisher)

// WithRoot keeps the volumes under dir instead of DefaultRoot. The node
// plugins must see dir at the same path.
func WithRoot(dir string) Option { return func(p *Publisher) { p.root = tree(dir) } }

// WithEndpoints names node plugin sockets outright (driver name → socket
// path), for an install whose plugins the agent cannot find through
// kubelet's plugin registration.
func WithEndpoints(endpoints map[string]string) Option {
	return func(p *Publisher) { p.endpoints = endpoints }
}

// WithCallTimeout bounds each call to a node plugin (DefaultCallTimeout).
func WithCallTimeout(d time.Duration) Option { return func(p *Publisher) { p.callTimeout = d } }

// NewPublisher returns a Publisher for the node whose kubelet root is
// kubeletRoot: node plugins are found through kubelet's plugin
// registration there, and volumes are kept under DefaultRoot.
func NewPublisher(kubeletRoot string, log logr.Logger, opts ...Option) *Publisher {
	p := &Publisher{root: tree(DefaultRoot(kubeletRoot)), kubeletRoot: kubeletRoot, log: log, mounter: mount.New(),
		callTimeout: DefaultCallTimeout, clients: map[string]*Client{}}
	for _, o := range opts {
		o(p)
	}
	p.plugins = kubelet.NewPlugins(kubeletRoot, p.endpoints)
	return p
}

// DefaultRoot is the agent's directory under the kubelet root:
// <root>/plugins/kubernetes.io/csi/ferrysync.io~volumes. Node plugin
// containers see the same paths there, because kubelet hands them paths
// in kubelet.CSIPluginDir and every driver's manifests mount it
// (Longhorn's and TopoLVM's mount nothing else of plugins/ but their own
// directory); kubelet itself never lists that directory, and the "~" keeps
// the name apart from every CSI driver's (driver names are DNS names).
func DefaultRoot(kubeletRoot string) string {
	return filepath.Join(kubelet.CSIPluginDir(kubeletRoot), "ferrysync.io~volumes")
}

// LegacyRoot is where agents before DefaultRoot kept their volumes
// (<root>/plugins/ferrysync.io/volumes, a directory some node plugins
// cannot see). Recover takes down what is left there.
func LegacyRoot(kubeletRoot string) string {
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
	old, err := p.root.readRecord(name)
	if err != nil {
		return "", err
	}
	if old != nil && !old.matches(v) {
		p.log.Info("volume published differently before; taking it down first", "name", name)
		if err := p.run(ctx, name, p.teardownSteps(p.root, name, *old)); err != nil {
			return "", err
		}
	}
	if err := p.run(ctx, name, p.publishSteps(name, v)); err != nil {
		return "", err
	}
	return p.root.target(name, v.Block), nil
}

// Unpublish takes the volume down: unpublish, unstage, forget. Taking down
// what is not published succeeds.
func (p *Publisher) Unpublish(ctx context.Context, name string) error {
	return p.unpublish(ctx, p.root, name)
}

func (p *Publisher) unpublish(ctx context.Context, t tree, name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	rec, err := t.readRecord(name)
	if err != nil {
		return err
	}
	if rec == nil {
		return t.forgetOrphan(name)
	}
	return p.run(ctx, name, p.teardownSteps(t, name, *rec))
}

// Recover is for agent start: it takes down every volume under the root that
// keep does not claim, so that no mount survives a crash unless it is still
// wanted. Wanted volumes stay as they are; publishing them again completes
// whatever the crash interrupted.
func (p *Publisher) Recover(ctx context.Context, keep func(name string) bool) error {
	var errs []error
	if legacy := tree(LegacyRoot(p.kubeletRoot)); legacy != p.root {
		// Volumes an older agent published there are taken down whether
		// wanted or not: a wanted one is published again under the root.
		errs = append(errs, p.recover(ctx, legacy, func(string) bool { return false }))
	}
	return errors.Join(append(errs, p.recover(ctx, p.root, keep))...)
}

func (p *Publisher) recover(ctx context.Context, t tree, keep func(name string) bool) error {
	entries, err := os.ReadDir(string(t))
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
		p.log.Info("taking down a volume no assignment wants", "name", e.Name(), "root", t)
		if err := p.unpublish(ctx, t, e.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// client returns a connection to driver's node plugin, found through
// kubelet's plugin registration each time (cheap while nothing changed),
// so that a plugin that re-registered at another endpoint is followed.
func (p *Publisher) client(ctx context.Context, driver string) (*Client, error) {
	if err := kubelet.CheckName("driver", driver); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	endpoint, err := p.plugins.Endpoint(ctx, driver)
	if err != nil {
		return nil, err
	}
	if c := p.clients[driver]; c != nil {
		if c.endpoint == endpoint {
			return c, nil
		}
		p.log.Info("CSI node plugin registered at another endpoint", "driver", driver, "old", c.endpoint, "new", endpoint)
		_ = c.Close()
		delete(p.clients, driver)
	}
	c, err := Dial(ctx, endpoint, p.callTimeout, p.log.WithValues("driver", driver))
	if err != nil {
		return nil, err
	}
	p.clients[driver] = c
	return c, nil
}

// tree is a directory of volume directories, one per published volume:
// the Publisher's root, or the legacy root Recover empties.
type tree string

func (t tree) dir(name string) string { return filepath.Join(string(t), name) }

func (t tree) target(name string, block bool) string {
	if block {
		return filepath.Join(t.dir(name), "device")
	}
	return filepath.Join(t.dir(name), "mount")
}

// legacyStagePath is where volumes were staged before they were staged at
// kubelet's path; a record without a staging path was staged there. Block
// volumes, which the agent refuses so far, still stage there.
func (t tree) legacyStagePath(name string) string { return filepath.Join(t.dir(name), "stage") }

// checkName keeps a volume name one safe path element.
func checkName(name string) error { return kubelet.CheckName("volume", name) }
