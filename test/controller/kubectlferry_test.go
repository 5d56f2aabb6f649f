package controller_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
)

// kubectlFerry drives the plugin as a user does, through kubectl's plugin
// lookup (kubectl-ferry on the PATH): pair a claim in one cluster with a
// replica in the other; pair again, which changes nothing; sync after a
// change, with progress; both sides in one status table; restore a claim
// from the latest image and find the source's data on it; rotate the keys
// and sync again; and a sync of a source that cannot run fails with the
// condition's message.
func kubectlFerry(src, dst *env) {
	t := src.t
	src.app("cli-src", "1")
	dst.namespace("cli-dst", privileged)
	ferry := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(src.c.BinDir, "kubectl"), append([]string{"ferry"}, args...)...)
		cmd.Env = append(os.Environ(), "PATH="+bins.Dir+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		t.Logf("kubectl ferry %s\n%s", strings.Join(args, " "), out)
		return string(out), err
	}
	onSource := []string{"--kubeconfig", src.c.Kubeconfig, "-n", "cli-src"}
	both := append(onSource, "--to-kubeconfig", dst.c.Kubeconfig, "--to-namespace", "cli-dst")

	out, err := ferry(append([]string{"pair", "data"}, both...)...)
	require.NoError(t, err, out)
	assert.Contains(t, out, "secret data-ferry-keys (source cli-src, destination cli-dst): generated")
	assert.Contains(t, out, "replicationdestination cli-dst/data: created")
	assert.Contains(t, out, "replicationsource cli-src/data: created")
	src.synced("cli-src", "data", "paired")
	first := dst.image("cli-dst", "data", "")
	rs, rd := src.rs("cli-src", "data"), dst.rd("cli-dst", "data")

	out, err = ferry(append([]string{"pair", "data"}, both...)...)
	require.NoError(t, err, out)
	assert.Contains(t, out, "secret data-ferry-keys (source cli-src, destination cli-dst): kept")
	assert.Equal(t, rs.ResourceVersion, src.rs("cli-src", "data").ResourceVersion, "pairing again writes nothing")
	assert.Equal(t, rd.Generation, dst.rd("cli-dst", "data").Generation, "pairing again changes no spec")

	src.onVolume("cli-src", "data", false, func(dir string) { writeApp(t, dir, "2") })
	want := src.tree("cli-src", "data")
	out, err = ferry(append([]string{"sync", "data"}, onSource...)...)
	require.NoError(t, err, out)
	assert.Contains(t, out, "synced in")

	out, err = ferry(append([]string{"status"}, both...)...)
	require.NoError(t, err, out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 3, "a header, the source and the destination")
	assert.Regexp(t, `^source\s+cli-src\s+data\s+\S+ ago\s`, lines[1])
	assert.Regexp(t, `^destination\s+cli-dst\s+data\s+\S+ ago\s`, lines[2])

	img := dst.image("cli-dst", "data", first)
	out, err = ferry(append([]string{"restore", "data", "--to-claim", "restored"}, both...)...)
	require.NoError(t, err, out)
	assert.Contains(t, out, "persistentvolumeclaim cli-dst/restored: created from VolumeSnapshot "+img)
	testenv.Eventually(t, "the restored claim to be bound", time.Minute, func() bool {
		pvc := &corev1.PersistentVolumeClaim{}
		require.NoError(t, dst.k.Get(context.Background(), client.ObjectKey{Namespace: "cli-dst", Name: "restored"}, pvc))
		return pvc.Status.Phase == corev1.ClaimBound
	})
	assert.Equal(t, want, dst.tree("cli-dst", "restored"), "the restored claim holds the source's data")

	out, err = ferry(append([]string{"pair", "data", "--rotate-keys"}, both...)...)
	require.NoError(t, err, out)
	assert.Contains(t, out, "secret data-ferry-keys (source cli-src, destination cli-dst): rotated")
	assert.Contains(t, out, "replicationsource cli-src/data: unchanged", "pairing again keeps the trigger kubectl ferry sync set")
	out, err = ferry(append([]string{"sync", "data"}, onSource...)...)
	require.NoError(t, err, "a sync with the new keys: %s", out)

	require.NoError(t, src.k.Create(context.Background(), &volsyncv1alpha1.ReplicationSource{
		ObjectMeta: metav1.ObjectMeta{Namespace: "cli-src", Name: "broken"},
		Spec: volsyncv1alpha1.ReplicationSourceSpec{SourcePVC: "data", Rsync: &volsyncv1alpha1.ReplicationSourceRsyncSpec{
			ReplicationSourceVolumeOptions: volsyncv1alpha1.ReplicationSourceVolumeOptions{CopyMethod: volsyncv1alpha1.CopyMethodDirect},
			SSHKeys:                        ptr.To("no-such-secret"), Address: ptr.To("10.0.0.1")}}}))
	out, err = ferry(append([]string{"sync", "broken", "--timeout", "1m"}, onSource...)...)
	require.Error(t, err, "a sync that cannot run exits non-zero")
	assert.Contains(t, out, "error: the ReplicationSource is not valid:")
	assert.Contains(t, out, "no-such-secret")
}
