package kubelet

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// registrar answers GetInfo as node-driver-registrar does.
type registrar struct {
	registerapi.UnimplementedRegistrationServer
	info *registerapi.PluginInfo
}

func (r registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return r.info, nil
}

// register serves a registration socket at path until the returned stop
// is called (or the test ends).
func register(t *testing.T, path, kind, name, endpoint string) (stop func()) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	ln, err := net.Listen("unix", path)
	require.NoError(t, err)
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, registrar{info: &registerapi.PluginInfo{Type: kind, Name: name, Endpoint: endpoint}})
	go func() { _ = srv.Serve(ln) }()
	stop = func() { srv.Stop(); _ = os.Remove(path) }
	t.Cleanup(stop)
	return stop
}

func mkfile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, nil, 0o600)
}

// shortDir is a directory whose sockets' paths fit a sockaddr_un.
func shortDir(t *testing.T) string {
	dir, err := os.MkdirTemp("/tmp", "reg")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// TestPluginsFoundAsKubeletFindsThem: a driver whose socket is not at
// plugins/<name>/csi.sock (csi-driver-host-path's, TopoLVM's) is found
// through its registration, in a subdirectory too; what kubelet ignores is
// ignored (names starting with ".", files that are not sockets, sockets
// nobody answers, other kinds of plugin); a driver nobody registered is an
// error that says what is registered; a restarted plugin with a new
// endpoint is followed; an override wins.
func TestPluginsFoundAsKubeletFindsThem(t *testing.T) {
	root := shortDir(t)
	reg := filepath.Join(root, "plugins_registry")
	ctx := context.Background()
	hostpath := filepath.Join(root, "plugins", "csi-hostpath", "csi.sock")
	stopHostpath := register(t, filepath.Join(reg, "hostpath.csi.k8s.io-reg.sock"), registerapi.CSIPlugin, "hostpath.csi.k8s.io", hostpath)
	register(t, filepath.Join(reg, "topolvm", "topolvm.io-reg.sock"), registerapi.CSIPlugin, "topolvm.io", "unix://"+root+"/plugins/topolvm.io/node/csi-topolvm.sock")
	register(t, filepath.Join(reg, ".hidden-reg.sock"), registerapi.CSIPlugin, "hidden.example.com", "/nowhere")
	register(t, filepath.Join(reg, "gpu-reg.sock"), registerapi.DevicePlugin, "gpu.example.com", "/dev-plugin.sock")
	require.NoError(t, mkfile(filepath.Join(reg, "not-a-socket")))
	stale, err := net.Listen("unix", filepath.Join(reg, "stale-reg.sock"))
	require.NoError(t, err)
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	require.NoError(t, stale.Close()) // the file stays; nobody answers

	p := NewPlugins(root, map[string]string{"ebs.csi.aws.com": "/override/csi.sock"})
	got, err := p.Endpoint(ctx, "hostpath.csi.k8s.io")
	require.NoError(t, err)
	assert.Equal(t, hostpath, got)
	got, err = p.Endpoint(ctx, "topolvm.io")
	require.NoError(t, err)
	assert.Equal(t, root+"/plugins/topolvm.io/node/csi-topolvm.sock", got, "in a subdirectory, unix:// dropped")
	got, err = p.Endpoint(ctx, "ebs.csi.aws.com")
	require.NoError(t, err)
	assert.Equal(t, "/override/csi.sock", got)
	for _, ignored := range []string{"hidden.example.com", "gpu.example.com", "local.csi.ferrysync.io"} {
		_, err = p.Endpoint(ctx, ignored)
		require.ErrorIs(t, err, ErrNotRegistered, ignored)
		assert.ErrorContains(t, err, "registered here: hostpath.csi.k8s.io, topolvm.io;")
	}

	// The plugin restarts and registers another endpoint.
	stopHostpath()
	moved := filepath.Join(root, "plugins", "csi-hostpath-v2", "csi.sock")
	register(t, filepath.Join(reg, "hostpath.csi.k8s.io-reg.sock"), registerapi.CSIPlugin, "hostpath.csi.k8s.io", moved)
	got, err = p.Endpoint(ctx, "hostpath.csi.k8s.io")
	require.NoError(t, err)
	assert.Equal(t, moved, got, "a re-registration is followed")

	// It goes away.
	stopHostpath = register(t, filepath.Join(reg, "x-reg.sock"), registerapi.CSIPlugin, "x.example.com", "/x.sock")
	_, err = p.Endpoint(ctx, "x.example.com")
	require.NoError(t, err)
	stopHostpath()
	_, err = p.Endpoint(ctx, "x.example.com")
	require.ErrorIs(t, err, ErrNotRegistered, "a deregistered plugin is forgotten")
}

// TestPluginsWithoutRegistry: a node with no registration directory yet
// has nothing registered, which is no failure of the lookup itself.
func TestPluginsWithoutRegistry(t *testing.T) {
	_, err := NewPlugins(shortDir(t), nil).Endpoint(context.Background(), "d.example.com")
	require.ErrorIs(t, err, ErrNotRegistered)
	assert.ErrorContains(t, err, "registered here: none")
}

func TestParseEndpoints(t *testing.T) {
	got, err := ParseEndpoints([]string{"topolvm.io=/var/lib/kubelet/plugins/topolvm.io/node/csi-topolvm.sock", "a.b=/x//y.sock"})
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"topolvm.io": "/var/lib/kubelet/plugins/topolvm.io/node/csi-topolvm.sock", "a.b": "/x/y.sock"}, got)
	for _, bad := range []string{"topolvm.io", "topolvm.io=relative.sock", "../x=/a.sock", "=/a.sock"} {
		_, err := ParseEndpoints([]string{bad})
		assert.Error(t, err, bad)
	}
}
