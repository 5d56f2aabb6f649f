package kubelet

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// ErrNotRegistered says that no plugin on this node registered the driver
// with kubelet: its node plugin does not run here, or has not started yet.
var ErrNotRegistered = errors.New("CSI driver is not registered on this node")

// infoTimeout bounds one GetInfo call, as kubelet's plugin manager bounds
// it (pkg/kubelet/pluginmanager/operationexecutor/operation_generator.go,
// v1.37.2, line 95: one second).
const infoTimeout = time.Second

// Plugins finds a CSI driver's node plugin socket the way kubelet does,
// never by guessing from the driver's name: drivers listen where their
// manifests say (csi-driver-host-path's hostpath.csi.k8s.io at
// plugins/csi-hostpath/csi.sock, TopoLVM at
// plugins/topolvm.io/node/csi-topolvm.sock), and announce that path through
// a registration socket under <root>/plugins_registry/, which kubelet's
// plugin watcher finds (recursively, ignoring names that start with ".":
// pkg/kubelet/pluginmanager/pluginwatcher/plugin_watcher.go, v1.37.2, lines
// 114-190) and asks with GetInfo for the driver's name and endpoint.
//
// Plugins asks the same sockets the same question. It keeps the answers and
// asks again whenever the set of registration sockets changed (a plugin
// restarted, re-registered or went away), which costs one directory walk
// per lookup; a plugin that moved its endpoint is thus found again at the
// next lookup. Overrides, for the odd install whose registration the agent
// cannot reach, name a driver's socket outright.
type Plugins struct {
	dir       string
	overrides map[string]string

	mu    sync.Mutex
	seen  []socketID        // the registration sockets at the last scan
	known map[string]string // driver → endpoint, from that scan
}

// socketID tells a socket file from the one that was there before: a
// restarted plugin makes a new one (a new inode).
type socketID struct {
	path  string
	inode uint64
	mtime int64
}

// NewPlugins finds plugins registered under <root>/plugins_registry, with
// overrides (driver name → socket path) taking precedence.
func NewPlugins(root string, overrides map[string]string) *Plugins {
	return &Plugins{dir: filepath.Join(root, "plugins_registry"), overrides: overrides, known: map[string]string{}}
}

// Endpoint returns the socket path of driver's node plugin. It is cheap when
// nothing changed (one walk of the registration directory), and asks every
// registration socket again otherwise: at most one second per socket that
// does not answer.
func (p *Plugins) Endpoint(ctx context.Context, driver string) (string, error) {
	if s, ok := p.overrides[driver]; ok {
		return s, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	sockets, err := p.sockets()
	if err != nil {
		return "", err
	}
	if !slices.Equal(sockets, p.seen) {
		p.known = ask(ctx, sockets)
		p.seen = sockets
	}
	if e, ok := p.known[driver]; ok {
		return e, nil
	}
	registered := "none"
	if len(p.known) > 0 {
		registered = strings.Join(slices.Sorted(maps.Keys(p.known)), ", ")
	}
	return "", fmt.Errorf("%w: %s (registered here: %s; kubelet finds plugins by their registration sockets in %s, as node-driver-registrar makes them; the agent's --csi-endpoint names a socket outright)",
		ErrNotRegistered, driver, registered, p.dir)
}

// sockets lists the registration sockets as kubelet's watcher sees them.
func (p *Plugins) sockets() ([]socketID, error) {
	var out []socketID
	err := filepath.WalkDir(p.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == p.dir && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("list plugin registrations in %s: %w", p.dir, err)
			}
			return nil // gone meanwhile, or no registry yet: nothing registered there
		}
		if path == p.dir || d.IsDir() || strings.HasPrefix(d.Name(), ".") || d.Type()&fs.ModeSocket == 0 {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		id := socketID{path: path, mtime: info.ModTime().UnixNano()}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			id.inode = st.Ino
		}
		out = append(out, id)
		return nil
	})
	return out, err
}

// ask asks each registration socket for its plugin; a socket that does not
// answer, or answers for another kind of plugin, is left out, as kubelet
// leaves it.
func ask(ctx context.Context, sockets []socketID) map[string]string {
	known := map[string]string{}
	for _, s := range sockets {
		info, err := getInfo(ctx, s.path)
		if err != nil || info.GetType() != registerapi.CSIPlugin || info.GetName() == "" {
			continue
		}
		known[info.GetName()] = strings.TrimPrefix(info.GetEndpoint(), "unix://")
	}
	return known
}

func getInfo(ctx context.Context, socket string) (*registerapi.PluginInfo, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connect to registration socket %s: %w", socket, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, infoTimeout)
	defer cancel()
	return registerapi.NewRegistrationClient(conn).GetInfo(ctx, &registerapi.InfoRequest{})
}

// ParseEndpoints reads --csi-endpoint values, DRIVER=SOCKET each, into
// overrides for NewPlugins. A socket must be an absolute path: it is
// dialled as it stands.
func ParseEndpoints(values []string) (map[string]string, error) {
	out := map[string]string{}
	for _, v := range values {
		driver, socket, ok := strings.Cut(v, "=")
		if !ok || !filepath.IsAbs(socket) {
			return nil, fmt.Errorf("CSI endpoint %q: want DRIVER=/absolute/path/to/csi.sock", v)
		}
		if err := CheckName("driver", driver); err != nil {
			return nil, fmt.Errorf("CSI endpoint %q: %w", v, err)
		}
		out[driver] = filepath.Clean(socket)
	}
	return out, nil
}
