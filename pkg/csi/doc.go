// Package csi lets the node agent reach a volume's data without a pod: it
// talks to the CSI node plugin on the plugin's unix socket the way kubelet
// does (NodeStageVolume to a per-volume staging path when the plugin stages,
// NodePublishVolume to a path of Ferry's own, read-only for sources, a device
// file for Block volumes). For drivers that require attach it publishes with
// the publish context of the VolumeAttachment the controller made
// (pkg/controller/assign): attaching is control-plane work, so this package
// carries no Kubernetes API client.
//
// Every step is idempotent and recorded before it is taken (a small
// volume.json beside the mounts, without secrets), so that an agent killed at
// any point can, on start, take down what no assignment wants any more
// (Publisher.Recover) and finish what is still wanted by publishing again.
// CSI requests and responses are logged only through protosanitizer, with
// secrets stripped.
//
// # Attachments and kube-controller-manager
//
// Found by running a real kube-controller-manager (v1.37) against a real
// external-attacher and restarting it (pkg/controller/assign's
// TestAttachAcrossControllerManagerRestart):
// on start its attach-detach controller lists every VolumeAttachment and
// adds each to its actual state of the world as "uncertain", then detaches
// whatever no pod it knows of needs. It waits while the node reports the
// volume in node.status.volumesInUse (kubelet reports what its pods mount),
// and as soon as the node's status comes without it, it detaches: within a
// second or two of the restart. Detaching, for CSI, is deleting the
// VolumeAttachment named "csi-" + sha256(volume handle + driver + node), the
// name it would have given the attachment itself; the external-attacher
// then calls ControllerUnpublishVolume. An attachment of another name is
// marked uncertain too, but the delete finds nothing and the attachment
// stays: so Ferry names its attachments "ferry-" + the same hash
// (assign.AttachmentName), and a restart leaves them alone.
//
// Anything else can still detach a volume (a person, a node drain tool). A
// detached volume comes back by itself: the controller's assign.Attach
// creates the attachment again once the old one is gone, the new attachment
// has a new UID, and a Volume whose Attachment differs from what was published is unpublished,
// unstaged and staged again with the new publish context. A sync running on
// it fails and is retried; no data is lost, because nothing on the volume is
// touched by the detach.
package csi
