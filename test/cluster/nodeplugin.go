package cluster

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ferrysync/ferry/internal/testenv/apiserver"
)

// CSIDriverImage is the local CSI driver's image (test/images/csidriver).
const CSIDriverImage = "localhost/ferry-test-csidriver:dev"

// AppImage is the application image of the real-node tests
// (test/images/app): sqlite3, rsync, OpenSSH.
const AppImage = "localhost/ferry-test-app:dev"

// PauseImage is the pod sandbox's image, imported on every node: a
// container that only waits.
const PauseImage = "registry.k8s.io/pause:3.10.1"

// pluginNamespace holds the CSI node plugin DaemonSets on real nodes.
const pluginNamespace = "kube-system"

func (c *Cluster) pkiDir() string { return filepath.Join(c.Dir, "pki") }

// realNodeAPIServer are the apiserver settings real nodes need: a serving
// certificate for the network address and the kubernetes Service's
// address, that address advertised (so the Service's endpoint is
// reachable from pods), and the ServiceAccount admission plugin back on
// (pods get their tokens through it).
func realNodeAPIServer(dir string, o Options) ([]apiserver.Option, error) {
	_, svc, err := net.ParseCIDR(o.ServiceCIDR)
	if err != nil {
		return nil, fmt.Errorf("cluster: service range: %w", err)
	}
	first := slices.Clone(svc.IP.To4())
	first[3]++
	pki := filepath.Join(dir, "pki")
	ca, err := apiserver.WriteServingCert(pki, net.ParseIP(o.Network.HostIP()), first)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	return []apiserver.Option{apiserver.WithServingCert(pki, ca),
		apiserver.WithAPIServerFlag("advertise-address", o.Network.HostIP()),
		apiserver.WithAPIServerFlag("kubelet-preferred-address-types", "InternalIP"),
		apiserver.WithoutAPIServerFlag("disable-admission-plugins")}, nil
}

// startNodePlugins runs each driver's node plugin as a DaemonSet, as a CSI
// driver is installed, and waits until kubelet registered all of them on
// every node.
func (c *Cluster) startNodePlugins(ctx context.Context) error {
	for _, d := range c.Drivers {
		if err := c.Client.Create(ctx, c.nodePlugin(d)); err != nil {
			return fmt.Errorf("cluster: node plugin %s: %w", d.Name, err)
		}
	}
	return waitFor(2*time.Minute, func() bool {
		for _, n := range c.Nodes {
			cn := &storagev1.CSINode{}
			if err := c.Client.Get(ctx, client.ObjectKey{Name: n.Name}, cn); err != nil || len(cn.Spec.Drivers) < len(c.Drivers) {
				return false
			}
		}
		return true
	})
}

// nodePlugin is the DaemonSet of one driver's node plugin: privileged,
// mounting into the kubelet root with Bidirectional propagation (only the
// directories its profile's real driver mounts, when it names them), with
// the data directory it shares with the controller-side instance.
func (c *Cluster) nodePlugin(d Driver) *appsv1.DaemonSet {
	name := d.Name
	labels := map[string]string{"app": "csi-node-" + name}
	hostPath := func(p string) corev1.VolumeSource {
		return corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: p}}
	}
	// The data directory at the host's own path: loop devices name their
	// backing file as the attaching process saw it, and teardown finds this
	// cluster's by that path.
	data := filepath.Join(c.Dir, "csi-data", name)
	const kubeletDir = "/var/lib/kubelet"
	socket := d.Profile.SocketPath(kubeletDir, name)
	args := []string{"-name=" + name, "-profile=" + d.Profile.Name, "-kubelet-dir=" + kubeletDir, "-endpoint=" + socket,
		"-node-id=$(NODE_NAME)", "-data-dir=" + data, "-registration-dir=" + kubeletDir + "/plugins_registry"}
	bidirectional := ptr.To(corev1.MountPropagationBidirectional)
	mounts := []corev1.VolumeMount{{Name: "dev", MountPath: "/dev"}, {Name: "data", MountPath: data}}
	volumes := []corev1.Volume{{Name: "dev", VolumeSource: hostPath("/dev")}, {Name: "data", VolumeSource: hostPath(data)}}
	visible := d.Profile.Visible
	if len(visible) > 0 {
		// Its socket's directory and the registration directory too, as
		// node-driver-registrar beside it needs.
		visible = append(slices.Clone(visible), strings.TrimPrefix(filepath.Dir(socket), kubeletDir+"/"), "plugins_registry")
	} else {
		visible = []string{"."}
	}
	for i, v := range visible {
		p := filepath.Join(kubeletDir, v)
		vol := fmt.Sprintf("kubelet-%d", i)
		mounts = append(mounts, corev1.VolumeMount{Name: vol, MountPath: p, MountPropagation: bidirectional})
		volumes = append(volumes, corev1.Volume{Name: vol, VolumeSource: corev1.VolumeSource{
			HostPath: &corev1.HostPathVolumeSource{Path: p, Type: ptr.To(corev1.HostPathDirectoryOrCreate)}}})
	}
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "csi-node-" + name, Namespace: pluginNamespace},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
					Containers: []corev1.Container{{
						Name: "driver", Image: CSIDriverImage, Args: args,
						Env: []corev1.EnvVar{{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{
							FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}}},
						SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true)},
						VolumeMounts:    mounts,
					}},
					Volumes: volumes,
				},
			},
		},
	}
}
