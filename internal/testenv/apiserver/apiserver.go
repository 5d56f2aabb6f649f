// Package apiserver runs Ferry's integration tests against a real
// kube-apiserver and etcd (controller-runtime's envtest, with the binaries
// that hack/build-testenv.sh builds into bin/testenv) with Ferry's CRDs from
// deploy/crd installed.
//
// One environment serves a whole test package: TestMain calls Main, tests call
// Need. In -short mode (make test-unit) no environment is started and the
// tests that need one skip; otherwise a missing binary fails the run, so an
// integration test can never pass by not running.
package apiserver

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/pkg/api/scheme"
)

// Env is a running kube-apiserver with Ferry's CRDs.
type Env struct {
	// Config reaches the apiserver as a cluster admin.
	Config *rest.Config
	// Client is a controller-runtime client with Ferry's and the core kinds.
	Client client.Client
	// Scheme knows Ferry's, the core and the apiextensions kinds.
	Scheme *runtime.Scheme
	// Kubeconfig is the path of a kubeconfig file for command-line tools such
	// as kubectl.
	Kubeconfig string
	// BinDir holds the control-plane binaries, kubectl among them.
	BinDir string

	env *envtest.Environment
	dir string
}

// Main starts an environment into *env unless the tests run with -short,
// runs the package's tests, stops the environment and returns the exit code
// for os.Exit.
func Main(m *testing.M, env **Env) int {
	flag.Parse()
	if testing.Short() {
		return m.Run()
	}
	e, err := Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "apiserver:", err)
		return 1
	}
	*env = e
	code := m.Run()
	if err := e.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "apiserver: stop:", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// Need skips t when no environment runs (only in -short mode).
func Need(t testing.TB, env *Env) {
	t.Helper()
	if env == nil {
		t.Skip("needs a kube-apiserver; runs in make test, not in -short mode")
	}
}

// Option changes how Start sets up the environment.
type Option func(*envtest.Environment)

// WithCRDs installs the CRDs in dirs too.
func WithCRDs(dirs ...string) Option {
	return func(te *envtest.Environment) { te.CRDDirectoryPaths = append(te.CRDDirectoryPaths, dirs...) }
}

// WithAPIServerFlag sets a kube-apiserver flag (such as
// service-cluster-ip-range, which must differ between clusters whose
// networks are joined).
func WithAPIServerFlag(name, value string) Option {
	return func(te *envtest.Environment) {
		te.ControlPlane.GetAPIServer().Configure().Set(name, value)
	}
}

// Start starts etcd and kube-apiserver and installs Ferry's CRDs.
func Start(opts ...Option) (*Env, error) {
	bin := os.Getenv("KUBEBUILDER_ASSETS")
	if bin == "" {
		return nil, errors.New("KUBEBUILDER_ASSETS is not set: run the tests with make test, which builds bin/testenv")
	}
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			return nil, fmt.Errorf("control-plane binary missing (run make testenv): %w", err)
		}
	}
	root, err := testenv.RepoRoot()
	if err != nil {
		return nil, err
	}
	s, err := scheme.New(apiextensionsv1.AddToScheme)
	if err != nil {
		return nil, err
	}
	te := &envtest.Environment{
		BinaryAssetsDirectory: bin,
		CRDDirectoryPaths:     []string{filepath.Join(root, "deploy", "crd")},
		ErrorIfCRDPathMissing: true,
		Scheme:                s,
	}
	for _, o := range opts {
		o(te)
	}
	cfg, err := te.Start()
	if err != nil {
		return nil, fmt.Errorf("start kube-apiserver and etcd: %w", err)
	}
	e := &Env{Config: cfg, Scheme: s, BinDir: bin, env: te}
	if err := e.finish(); err != nil {
		_ = te.Stop()
		return nil, err
	}
	return e, nil
}

// finish builds the client and writes the kubeconfig.
func (e *Env) finish() error {
	c, err := client.New(e.Config, client.Options{Scheme: e.Scheme})
	if err != nil {
		return fmt.Errorf("create client: %w", err)
	}
	e.Client = c
	user, err := e.env.AddUser(envtest.User{Name: "ferry-test-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("add admin user: %w", err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return fmt.Errorf("render kubeconfig: %w", err)
	}
	if e.dir, err = os.MkdirTemp("", "ferry-testenv-"); err != nil {
		return fmt.Errorf("create kubeconfig dir: %w", err)
	}
	e.Kubeconfig = filepath.Join(e.dir, "kubeconfig")
	if err := os.WriteFile(e.Kubeconfig, kc, 0o600); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}

// Stop stops the apiserver and etcd and removes their state.
func (e *Env) Stop() error {
	err := e.env.Stop()
	if e.dir != "" {
		err = errors.Join(err, os.RemoveAll(e.dir))
	}
	return err
}

// WithoutAPIServerFlag drops a flag envtest sets by default, such as
// disable-admission-plugins (envtest turns the ServiceAccount plugin off;
// pods on real nodes need it for their tokens).
func WithoutAPIServerFlag(name string) Option {
	return func(te *envtest.Environment) {
		te.ControlPlane.GetAPIServer().Configure().Disable(name)
	}
}

// WithServingCert makes the apiserver serve the certificate that
// WriteServingCert wrote into dir, signed by ca.
func WithServingCert(dir string, ca []byte) Option {
	return func(te *envtest.Environment) {
		s := te.ControlPlane.GetAPIServer()
		s.CertDir = dir
		s.SecureServing.CA = ca
	}
}
