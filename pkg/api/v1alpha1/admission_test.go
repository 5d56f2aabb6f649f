package v1alpha1_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/ferrysync/ferry/internal/testenv"
	"github.com/ferrysync/ferry/internal/testenv/apiserver"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
)

var env *apiserver.Env

func TestMain(m *testing.M) { os.Exit(apiserver.Main(m, &env)) }

// apply sends a manifest the way `kubectl apply --server-side` does, with
// which refuses fields the schema does not declare.
func apply(t *testing.T, manifest string) error {
	t.Helper()
	obj := &unstructured.Unstructured{}
	require.NoError(t, yaml.Unmarshal([]byte(manifest), &obj.Object))
	ensureNamespace(t, obj.GetNamespace())
	return env.Client.Apply(context.Background(), client.ApplyConfigurationFromUnstructured(obj),
		client.FieldOwner("ferry-admission-test"), client.ForceOwnership)
}

func ensureNamespace(t *testing.T, name string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := env.Client.Create(context.Background(), ns); err != nil && !apierrors.IsAlreadyExists(err) {
		require.NoError(t, err)
	}
}

// TestSpecExamplesAreAccepted applies every example of the spec unchanged.
func TestSpecExamplesAreAccepted(t *testing.T) {
	apiserver.Need(t, env)
	root, err := testenv.RepoRoot()
	require.NoError(t, err)
	files, err := filepath.Glob(filepath.Join(root, "examples", "volsync", "*.yaml"))
	require.NoError(t, err)
	require.Len(t, files, 4)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			require.NoError(t, err)
			require.NoError(t, apply(t, string(data)))
		})
	}
}

// TestExamplesMatchSpec keeps the project's copy of the spec's examples
// equal to the spec's own: examples/volsync/SHA256SUMS.spec records the
// spec's files, the copies must match it, and where the spec is checked out
// beside the project its files must match it too (a changed spec shows here).
func TestExamplesMatchSpec(t *testing.T) {
	root, err := testenv.RepoRoot()
	require.NoError(t, err)
	dir := filepath.Join(root, "examples", "volsync")
	sums, err := os.ReadFile(filepath.Join(dir, "SHA256SUMS.spec"))
	require.NoError(t, err)
	want := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(sums)), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		require.True(t, ok, line)
		want[name] = sum
	}
	require.Len(t, want, 4, "the spec has four examples")
	check := func(dir string) {
		for name, sum := range want {
			data, err := os.ReadFile(filepath.Join(dir, name))
			require.NoError(t, err)
			assert.Equal(t, sum, fmt.Sprintf("%x", sha256.Sum256(data)), filepath.Join(dir, name))
		}
	}
	check(dir)
	if spec := filepath.Join(root, "..", "shared", "spec", "examples"); dirExists(spec) {
		check(spec)
	}
}

func dirExists(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.IsDir()
}

// TestValidManifestsAreAccepted covers VolSync manifests beyond the spec's
// examples: other schedule forms, a manual trigger, destinationPVC, the mover
// pod fields Ferry accepts without effect, and a mover Ferry does not serve
// (accepted here, refused later in a condition).
func TestValidManifestsAreAccepted(t *testing.T) {
	apiserver.Need(t, env)
	cases := map[string]string{
		"hourly macro": source("good-hourly", `trigger: {schedule: "@hourly"}`, `copyMethod: Clone`),
		"ranges lists and names": source("good-cron", `trigger: {schedule: "0,30 8-18/2 * JAN-DEC MON-FRI"}`,
			`copyMethod: Snapshot`),
		"manual trigger": source("good-manual", `trigger: {manual: first}`, "copyMethod: Direct\n    port: 2222\n    path: /sub"),
		"none is direct": source("good-none", "", `copyMethod: None`),
		"mover pod fields": source("good-mover", "", `copyMethod: Clone
    moverServiceAccount: sa
    moverPodLabels: {a: b}
    moverResources: {limits: {memory: 1Gi, cpu: "1"}}
    moverSecurityContext: {runAsUser: 1000, fsGroup: 1000}
    moverAffinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: k, operator: In, values: [v]}]}]}}}`),
		"destination into an existing PVC": destination("good-dpvc", `copyMethod: Direct
    destinationPVC: existing
    serviceType: LoadBalancer
    serviceAnnotations: {lb.example.com/internal: "true"}
    port: 0`),
		"destination block volume": destination("good-block", `copyMethod: Snapshot
    capacity: 1Gi
    accessModes: [ReadWriteOncePod]
    volumeMode: Block
    cleanupTempPVC: true`),
		"unserved mover": `apiVersion: volsync.backube/v1alpha1
kind: ReplicationSource
metadata: {name: good-rclone, namespace: admission}
spec:
  sourcePVC: data
  rclone: {rcloneConfig: cfg, copyMethod: Clone, anything: [1, 2]}`,
	}
	for name, manifest := range cases {
		t.Run(name, func(t *testing.T) {
			require.NoError(t, apply(t, manifest))
		})
	}
}

// TestInvalidManifestsAreRejected checks that each bad manifest is refused
// at admission with a message that names the field and says what to fix.
func TestInvalidManifestsAreRejected(t *testing.T) {
	apiserver.Need(t, env)
	cases := []struct {
		name     string
		manifest string
		want     []string
	}{
		{"invalid cron", source("bad-cron", `trigger: {schedule: "every five minutes"}`, `copyMethod: Clone`),
			[]string{"spec.trigger.schedule", "must be a cron schedule of five fields"}},
		{"cron with four fields", source("bad-cron4", `trigger: {schedule: "*/5 * * *"}`, `copyMethod: Clone`),
			[]string{"spec.trigger.schedule", "must be a cron schedule of five fields"}},
		{"port 70000", source("bad-port", "", "copyMethod: Clone\n    port: 70000"),
			[]string{"spec.rsync.port", "less than or equal to 65535"}},
		{"negative port", destination("bad-port", "copyMethod: Snapshot\n    capacity: 1Gi\n    accessModes: [ReadWriteOnce]\n    port: -1"),
			[]string{"spec.rsync.port", "greater than or equal to 0"}},
		{"copyMethod Copy", source("bad-copy", "", `copyMethod: Copy`),
			[]string{"spec.rsync.copyMethod", `Unsupported value: "Copy"`, `"Clone"`, `"Snapshot"`}},
		{"missing copyMethod", source("bad-nocopy", "", `address: x`),
			[]string{"spec.rsync.copyMethod", "Required value"}},
		{"destination without capacity or destinationPVC", destination("bad-novol", `copyMethod: Snapshot`),
			[]string{"spec.rsync", "name an existing PVC in destinationPVC, or give both capacity and accessModes"}},
		{"destination capacity without accessModes", destination("bad-noam", "copyMethod: Snapshot\n    capacity: 1Gi"),
			[]string{"spec.rsync", "give both capacity and accessModes"}},
		{"Clone on a destination", destination("bad-clone", "copyMethod: Clone\n    capacity: 1Gi\n    accessModes: [ReadWriteOnce]"),
			[]string{"spec.rsync.copyMethod", `Unsupported value: "Clone"`, `"Direct"`, `"Snapshot"`}},
		{"unknown serviceType", destination("bad-svc", "copyMethod: Snapshot\n    capacity: 1Gi\n    accessModes: [ReadWriteOnce]\n    serviceType: NodePort"),
			[]string{"spec.rsync.serviceType", `Unsupported value: "NodePort"`, `"ClusterIP"`, `"LoadBalancer"`}},
		{"unknown access mode", destination("bad-am", "copyMethod: Snapshot\n    capacity: 1Gi\n    accessModes: [ReadWriteSometimes]"),
			[]string{"spec.rsync.accessModes[0]", `Unsupported value: "ReadWriteSometimes"`}},
		{"two movers", `apiVersion: volsync.backube/v1alpha1
kind: ReplicationSource
metadata: {name: bad-two, namespace: admission}
spec:
  sourcePVC: data
  rsync: {copyMethod: Clone}
  restic: {repository: r}`, []string{"spec", "set exactly one mover"}},
		{"no mover", `apiVersion: volsync.backube/v1alpha1
kind: ReplicationDestination
metadata: {name: bad-none, namespace: admission}
spec: {paused: true}`, []string{"spec", "set exactly one mover"}},
		{"missing sourcePVC", `apiVersion: volsync.backube/v1alpha1
kind: ReplicationSource
metadata: {name: bad-nopvc, namespace: admission}
spec:
  rsync: {copyMethod: Clone}`, []string{"spec.sourcePVC", "Required value"}},
		{"unknown field", source("bad-field", "", "copyMethod: Clone\n    compression: zstd"),
			[]string{".spec.rsync.compression: field not declared in schema"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := apply(t, tc.manifest)
			require.Error(t, err, "the manifest must be rejected")
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

// TestExplainDescribesEveryRsyncField runs `kubectl explain` against the
// apiserver: every field of spec.rsync is listed with a description.
func TestExplainDescribesEveryRsyncField(t *testing.T) {
	apiserver.Need(t, env)
	for _, tc := range []struct {
		resource string
		fields   []string
	}{
		{"replicationsource.spec.rsync", []string{"copyMethod", "capacity", "storageClassName", "accessModes",
			"volumeSnapshotClassName", "volumeMode", "sshKeys", "serviceType", "address", "port", "path", "sshUser",
			"moverResources", "moverServiceAccount", "moverPodLabels", "moverSecurityContext", "moverAffinity"}},
		{"replicationdestination.spec.rsync", []string{"copyMethod", "capacity", "storageClassName", "accessModes",
			"volumeSnapshotClassName", "destinationPVC", "volumeMode", "cleanupTempPVC", "sshKeys", "serviceType",
			"serviceAnnotations", "address", "port", "path", "sshUser", "moverResources"}},
	} {
		t.Run(tc.resource, func(t *testing.T) {
			// The apiserver publishes a new CRD's OpenAPI a moment after the
			// CRD is established: poll, with a deadline.
			var out []byte
			var err error
			testenv.Eventually(t, "kubectl explain "+tc.resource, 30*time.Second, func() bool {
				out, err = exec.Command(filepath.Join(env.BinDir, "kubectl"), "--kubeconfig", env.Kubeconfig,
					"explain", tc.resource).CombinedOutput()
				return err == nil
			}, func() string { return fmt.Sprintf("%v: %s", err, out) })
			described := explainedFields(string(out))
			for _, f := range tc.fields {
				assert.Truef(t, described[f], "kubectl explain %s: field %s missing or without description:\n%s", tc.resource, f, out)
			}
		})
	}
}

// explainedFields parses kubectl explain's FIELDS section: a field line
// ("  name\t<type>"), maybe an "enum:" line, then an indented, non-empty
// description.
func explainedFields(out string) map[string]bool {
	lines := strings.Split(out, "\n")
	described := map[string]bool{}
	for i, l := range lines {
		if !strings.HasPrefix(l, "  ") || strings.HasPrefix(l, "   ") || !strings.Contains(l, "<") {
			continue
		}
		name := strings.Fields(l)[0]
		next := i + 1
		if next < len(lines) && strings.HasPrefix(strings.TrimSpace(lines[next]), "enum:") {
			next++
		}
		if next < len(lines) && strings.HasPrefix(lines[next], "    ") && strings.TrimSpace(lines[next]) != "" &&
			!strings.Contains(lines[next], "<no description>") {
			described[name] = true
		}
	}
	return described
}

func source(name, trigger, rsync string) string {
	m := "apiVersion: volsync.backube/v1alpha1\nkind: ReplicationSource\nmetadata: {name: " + name +
		", namespace: admission}\nspec:\n  sourcePVC: data\n"
	if trigger != "" {
		m += "  " + trigger + "\n"
	}
	return m + "  rsync:\n    address: dest.example.com\n    sshKeys: keys\n    " + rsync + "\n"
}

func destination(name, rsync string) string {
	return "apiVersion: volsync.backube/v1alpha1\nkind: ReplicationDestination\nmetadata: {name: " + name +
		", namespace: admission}\nspec:\n  rsync:\n    " + rsync + "\n"
}

// TestVolSyncStatusOfOtherMoversSurvives: Ferry's CRDs replace VolSync's,
// while VolSync may still serve restic or rclone CRs beside Ferry. What
// VolSync writes in their status stays (no pruning), and a status Ferry
// writes through its own types keeps it too.
func TestVolSyncStatusOfOtherMoversSurvives(t *testing.T) {
	apiserver.Need(t, env)
	ctx, k := context.Background(), env.Client
	require.NoError(t, apply(t, `apiVersion: volsync.backube/v1alpha1
kind: ReplicationSource
metadata: {name: restic-status, namespace: admission}
spec:
  sourcePVC: data
  restic: {repository: restic-config, pruneIntervalDays: 7}`))
	u := &unstructured.Unstructured{}
	u.SetAPIVersion("volsync.backube/v1alpha1")
	u.SetKind("ReplicationSource")
	require.NoError(t, k.Get(ctx, client.ObjectKey{Namespace: "admission", Name: "restic-status"}, u))
	status := map[string]any{
		"restic":    map[string]any{"lastPruned": "2026-11-01T00:00:00Z", "lastUnlocked": "x"},
		"rsyncTLS":  map[string]any{"address": "10.0.0.9", "keySecret": "tls-keys"},
		"syncthing": map[string]any{"ID": "ABC", "peers": []any{map[string]any{"ID": "DEF", "connected": true}}},
		"external":  map[string]any{"provider": "p"},
	}
	u.Object["status"] = status
	require.NoError(t, k.Status().Update(ctx, u))

	rs := &volsyncv1alpha1.ReplicationSource{}
	require.NoError(t, k.Get(ctx, client.ObjectKeyFromObject(u), rs))
	rs.Status.LastManualSync = "by-ferry"
	require.NoError(t, k.Status().Update(ctx, rs))

	require.NoError(t, k.Get(ctx, client.ObjectKeyFromObject(u), u))
	got := u.Object["status"].(map[string]any)
	for field, want := range status {
		assert.Equal(t, want, got[field], field)
	}
	assert.Equal(t, "by-ferry", got["lastManualSync"])
}
