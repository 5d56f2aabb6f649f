package driver

import (
	"path/filepath"
	"slices"
	"strings"
)

// Profile is how strict one real CSI driver is towards whoever calls its
// node plugin, modelled on that driver's own code (each switch cites the
// file and lines it follows). Ferry's agent calls node plugins itself,
// beside kubelet; a profile lets the tests hold it to what the drivers
// users run would accept. Every profile is still a valid CSI driver:
// csi-sanity passes for each.
//
// Commits read: kubernetes-csi/csi-driver-host-path 1f2b2e6 (HP),
// kubernetes-sigs/aws-ebs-csi-driver 429e202 (EBS), longhorn/longhorn-manager
// 5ddaa36 (LHM), ceph/ceph-csi 52fcb7b (CEPH), topolvm/topolvm 83e3dce (TL),
// openebs/lvm-localpv f3276f4 (LVM).
type Profile struct {
	// Name names the profile, and is the first label of its driver name
	// (Profile.Driver).
	Name string
	// Socket is where the node plugin listens, relative to the kubelet
	// root's plugins/ directory; {driver} stands for the driver name. It is announced
	// through the registration socket, never derived from the name by
	// the caller.
	Socket string
	// NoStage: no STAGE_UNSTAGE_VOLUME capability; NodePublishVolume mounts
	// the device itself (TL internal/driver/node.go; LVM pkg/driver/agent.go).
	NoStage bool
	// SingleNodeMultiWriter advertises SINGLE_NODE_MULTI_WRITER, so kubelet
	// sends SINGLE_NODE_MULTI_WRITER for RWO (HP nodeserver.go:377-419;
	// LHM csi/node_server.go:92-98).
	SingleNodeMultiWriter bool
	// OnlySingleNodeWriter refuses every access mode but
	// SINGLE_NODE_WRITER on the node, FailedPrecondition (TL
	// internal/driver/node.go:144-151).
	OnlySingleNodeWriter bool
	// SharedForMultiNode refuses MULTI_NODE_* for a volume that was not
	// created for shared use, FailedPrecondition (LHM
	// csi/node_server.go:547-550).
	SharedForMultiNode bool
	// AttachRequired: ControllerPublishVolume first; NodeStage fails for a
	// volume not attached to this node.
	AttachRequired bool
	// DevicePath requires publish_context["devicePath"] in NodeStage,
	// InvalidArgument "Device path not provided" (EBS
	// pkg/driver/node.go:201-204), and ControllerUnpublishVolume takes the
	// device away from the node: I/O on a mount of it fails afterwards.
	DevicePath bool
	// MaxVolumesPerNode is NodeGetInfo's attach limit (EBS
	// pkg/driver/node.go:814-847, from the instance type).
	MaxVolumesPerNode int64
	// OneStagingPath keeps one staging path per volume: a second is
	// FailedPrecondition "already staged at", a publish from another is
	// InvalidArgument "was staged at", and unstaging while published is
	// Internal (HP pkg/hostpath/nodeserver.go:96-103, 304-306, 342-344).
	OneStagingPath bool
	// UnknownNotFound answers NodeUnpublish and NodeUnstage of a volume it
	// does not know with NotFound, not success (HP
	// pkg/hostpath/nodeserver.go:226-229, state.go:212).
	UnknownNotFound bool
	// StageSecrets are the NodeStage secret keys it requires,
	// InvalidArgument "stage secrets cannot be nil or empty" (CEPH
	// internal/util/validate.go:23-25, credentials.go:74-98).
	StageSecrets []string
	// StageInSubdir mounts at <staging path>/<volume id> and needs the
	// staging directory to exist, InvalidArgument "staging path ... does
	// not exist on node" (CEPH internal/rbd/nodeserver.go:291-303,
	// internal/util/validate.go:28-34).
	StageInSubdir bool
	// Visible are the directories below the kubelet root its node plugin
	// container mounts (with Bidirectional propagation); empty: all of it.
	// A path elsewhere exists only inside its container, so a stage or
	// publish there succeeds and leaves nothing the host sees (LH
	// deploy/longhorn.yaml, LHM deployment.go:393-460).
	Visible []string
	// SourceNodeOnly creates a volume from a snapshot or clone only on the
	// source volume's node, InvalidArgument "cannot find source volume's
	// node" when the accessibility requirements exclude it (TL
	// internal/driver/controller.go:241-246).
	SourceNodeOnly bool
	// OneMount refuses to mount a volume's device a second time,
	// Internal "verifyMount: device already mounted at" (LVM
	// pkg/lvm/mount.go:173-180).
	OneMount bool
}

// Profiles are the strict drivers the tests run, by name.
var Profiles = map[string]Profile{
	// csi-driver-host-path: hostpath.csi.k8s.io listens at
	// plugins/csi-hostpath/csi.sock (deploy/kubernetes-1.34/hostpath/
	// csi-hostpath-plugin.yaml:248-249, 302, 404-408).
	"hostpath": {Name: "hostpath", Socket: "csi-hostpath/csi.sock", SingleNodeMultiWriter: true,
		OneStagingPath: true, UnknownNotFound: true},
	// Longhorn: its plugin container mounts only pods/ and
	// plugins/kubernetes.io/csi/ of the kubelet root, besides its own
	// socket directory (LHM app/... deployment.go:393-460).
	"longhorn": {Name: "longhorn", Socket: "{driver}/csi.sock", SingleNodeMultiWriter: true, SharedForMultiNode: true,
		AttachRequired: true, Visible: []string{"pods", "plugins/kubernetes.io/csi"}},
	// AWS EBS: attach required, the device path in the publish context,
	// an attach limit.
	"ebs": {Name: "ebs", Socket: "{driver}/csi.sock", AttachRequired: true, DevicePath: true, MaxVolumesPerNode: 8},
	// ceph-csi RBD: stage secrets userID and userKey; stages in a
	// subdirectory named by the volume.
	"ceph": {Name: "ceph", Socket: "{driver}/csi.sock", SingleNodeMultiWriter: true, StageSecrets: []string{"userID", "userKey"},
		StageInSubdir: true},
	// TopoLVM: plugins/topolvm.io/node/csi-topolvm.sock, no staging,
	// SINGLE_NODE_WRITER only, copies on the source's node.
	"topolvm": {Name: "topolvm", Socket: "topolvm.io/node/csi-topolvm.sock", NoStage: true, OnlySingleNodeWriter: true,
		SourceNodeOnly: true},
	// OpenEBS lvm-localpv: plugins/lvm-localpv/csi.sock, no staging, one
	// mount per volume.
	"lvm": {Name: "lvm", Socket: "lvm-localpv/csi.sock", NoStage: true, OneMount: true},
}

// ProfileNames are the profiles in a fixed order.
func ProfileNames() []string {
	names := make([]string, 0, len(Profiles))
	for n := range Profiles {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Driver is the CSI driver name a profile serves under: one per profile,
// since capabilities and attach are properties of a driver.
func (p Profile) Driver() string { return p.Name + ".csi.ferrysync.io" }

// SocketPath is where a node plugin of this profile listens on a node
// whose kubelet root is kubeletDir.
func (p Profile) SocketPath(kubeletDir, driver string) string {
	socket := p.Socket
	if socket == "" {
		socket = "{driver}/csi.sock"
	}
	return filepath.Join(kubeletDir, "plugins", strings.ReplaceAll(socket, "{driver}", driver))
}

// visible reports whether the node plugin's container sees path at the
// same place (always, for a profile without Visible).
func (p Profile) visible(kubeletDir, path string) bool {
	if len(p.Visible) == 0 {
		return true
	}
	for _, v := range p.Visible {
		dir := filepath.Join(kubeletDir, v)
		if path == dir || strings.HasPrefix(path, dir+"/") {
			return true
		}
	}
	return false
}
