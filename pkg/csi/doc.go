// Package csi lets the node agent reach a volume's data without a pod: it
// talks to the CSI node plugin the way kubelet does, so that a driver sees
// from Ferry exactly what it sees from kubelet:
//
//   - the plugin's socket is the endpoint its registration announces in
//     kubelet's plugins_registry (kubelet.Plugins), never guessed from the
//     driver's name;
//   - NodeStageVolume (when the plugin stages) goes to kubelet's own staging
//     path for the volume (kubelet.StagingPath): a node has one staging path
//     per volume, shared with kubelet; Ferry leaves a volume staged while
//     kubelet has it staged or anything else mounts from it (keepStaged),
//     as kubelet leaves it staged while Ferry's mount remains;
//   - NodePublishVolume goes to a path of Ferry's own under kubelet's CSI
//     plugin directory (DefaultRoot), which every node plugin container
//     mounts, read-only for sources, a device file for Block volumes, and
//     the mount is checked afterwards: a plugin that mounted only inside its
//     own container fails the publish instead of a later sync;
//   - the access mode is kubelet's mapping of the PV's first access mode
//     (accessMode), and every call is bounded as kubelet bounds it
//     (DefaultCallTimeout).
//
// For drivers that require attach it publishes with the publish context of
// the VolumeAttachment the controller made (pkg/controller/assign):
// attaching is control-plane work, so this package carries no Kubernetes
// API client.
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
// (assign.AttachmentName), and a restart leaves them alone. Where a pod on
// the node has kubelet's attachment, the controller uses that one instead
// and makes none (assign.Attach), since the external-attacher detaches on
// the deletion of either.
//
// Anything else can still detach a volume (a person, a node drain tool). A
// detached volume comes back by itself: the controller's assign.Attach
// creates the attachment again once the old one is gone, the new attachment
// has a new UID, and a Volume whose Attachment differs from what was published is unpublished,
// unstaged and staged again with the new publish context. A sync running on
// it fails and is retried; no data is lost, because nothing on the volume is
// touched by the detach.
package csi
