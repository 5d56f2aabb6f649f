package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// NodeNameField is the field the agent selects its own assignments by, so
// that its cache and watch hold only its node's objects.
const NodeNameField = "spec.nodeName"

// OwnerReference names the ReplicationSource or ReplicationDestination an
// assignment works for. Assignments live in Ferry's namespace, apart from the
// CR, so this is not a metadata.ownerReference; the agent uses it to check
// that the volume really belongs to that CR before it mounts anything.
type OwnerReference struct {
	// kind is ReplicationSource or ReplicationDestination.
	// +kubebuilder:validation:Enum=ReplicationSource;ReplicationDestination
	Kind string `json:"kind"`
	// namespace of the CR.
	// +kubebuilder:validation:MinLength=1
	Namespace string `json:"namespace"`
	// name of the CR.
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
	// uid of the CR, so that a deleted and re-created CR of the same name is
	// not mistaken for the old one.
	UID string `json:"uid"`
}

// SecretReference names a Secret and the namespace it is in.
type SecretReference struct {
	// namespace of the Secret.
	Namespace string `json:"namespace"`
	// name of the Secret.
	Name string `json:"name"`
}

// Volume names the PersistentVolume the agent mounts through its CSI node
// plugin. The agent reads everything else about the volume (fsType, mount
// options, attributes, secret references, volume mode) from the live PV:
// one source of truth. Driver and handle are here so that the agent can check
// that the PV is still the volume the controller meant; it unmounts from its
// own on-disk record, so a PV deleted meanwhile does not strand a mount.
// Read-only or read-write follows from the role.
type Volume struct {
	// persistentVolumeName is the PV to mount; it must be bound to a PVC that
	// owner owns.
	// +kubebuilder:validation:MinLength=1
	PersistentVolumeName string `json:"persistentVolumeName"`
	// claim is the PVC, in the owner's namespace, that the PV is bound to.
	// +kubebuilder:validation:MinLength=1
	Claim string `json:"claim"`
	// driver is the CSI driver name.
	// +kubebuilder:validation:MinLength=1
	Driver string `json:"driver"`
	// volumeHandle is the CSI volume ID.
	// +kubebuilder:validation:MinLength=1
	VolumeHandle string `json:"volumeHandle"`
	// attachment is the VolumeAttachment the controller made for a driver
	// that requires attach; the agent publishes the volume only once it is
	// set, and publishes it anew when its uid changes (it was detached and
	// attached again).
	// +optional
	Attachment *Attachment `json:"attachment,omitempty"`
	// reuseKubeletMount asks the agent to bind kubelet's existing mount of
	// the volume (copyMethod Direct, with a pod already using it) instead of
	// publishing it again.
	// +optional
	ReuseKubeletMount bool `json:"reuseKubeletMount,omitempty"`
}

// Attachment is a VolumeAttachment that is attached.
type Attachment struct {
	// name of the VolumeAttachment.
	Name string `json:"name"`
	// uid of the VolumeAttachment: a new one means a new attachment.
	UID string `json:"uid"`
	// metadata is the attachment's status.attachmentMetadata, the publish
	// context for the node plugin.
	// +optional
	Metadata map[string]string `json:"metadata,omitempty"`
}

// SourceRole makes the agent push the volume to a destination.
type SourceRole struct {
	// address of the destination's ssh endpoint.
	// +kubebuilder:validation:MinLength=1
	Address string `json:"address"`
	// port of the destination's ssh endpoint.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`
	// user for the ssh connection.
	// +kubebuilder:default=root
	User string `json:"user,omitempty"`
	// path within the destination volume to write to.
	// +kubebuilder:default="/"
	Path string `json:"path,omitempty"`
	// keySecret holds the source's keys in VolSync's format: source (private
	// key) and destination.pub (the pinned host key).
	KeySecret SecretReference `json:"keySecret"`
	// privileged preserves ownership, setuid bits and device nodes (the
	// namespace allows privileged movers).
	// +optional
	Privileged bool `json:"privileged,omitempty"`
	// compression is how the sender compresses: zstd, zstd:LEVEL, lz4,
	// zlib, zlib:LEVEL or none ("": the agent's default, zstd:3, as VolSync's -z).
	// +kubebuilder:validation:Pattern=`^(none|lz4|(zstd|zlib)(:-?[0-9]+)?)$`
	// +optional
	Compression string `json:"compression,omitempty"`
	// bandwidthLimit caps what the transfer sends, in bytes per second on
	// the wire (0: no limit of its own; the node's cap still applies).
	// +kubebuilder:validation:Minimum=0
	// +optional
	BandwidthLimit int64 `json:"bandwidthLimit,omitempty"`
}

// DestinationRole makes the agent publish the volume read-write and accept
// syncs for it on the node's ssh endpoint.
type DestinationRole struct {
	// keySecret holds the destination's keys in VolSync's format: destination
	// (the private host key) and source.pub (the one key allowed in).
	KeySecret SecretReference `json:"keySecret"`
	// privileged lets incoming syncs set ownership, setuid bits and device
	// nodes (the namespace allows privileged movers).
	// +optional
	Privileged bool `json:"privileged,omitempty"`
	// runAs is the user and group an unprivileged receiver runs as, from
	// the CR's moverSecurityContext (runAsUser; runAsGroup, else fsGroup,
	// else the user). Unset: the agent's default. Ignored when privileged.
	// +optional
	RunAs *RunAs `json:"runAs,omitempty"`
	// inPlace lets a Ferry source update changed files in place instead of
	// writing a new copy of each: set for destinations whose every
	// completed sync is snapshotted (copyMethod Snapshot), where the
	// replica is never itself the image, so a half-updated file is never
	// seen; never for Direct, where the replica is the image.
	// +optional
	InPlace bool `json:"inPlace,omitempty"`
}

// RunAs is a numeric user and group.
type RunAs struct {
	// uid of the user.
	// +kubebuilder:validation:Minimum=0
	UID int64 `json:"uid"`
	// gid of the group.
	// +kubebuilder:validation:Minimum=0
	GID int64 `json:"gid"`
}

// MountAssignmentSpec is what the controller asks of one node's agent.
// +kubebuilder:validation:XValidation:rule="has(self.source) != has(self.destination)",message="set exactly one role: source or destination"
// +kubebuilder:validation:XValidation:rule="self.nodeName == oldSelf.nodeName",message="nodeName is immutable: delete the assignment and create one for the new node"
type MountAssignmentSpec struct {
	// nodeName is the node whose agent carries out this assignment.
	// +kubebuilder:validation:MinLength=1
	NodeName string `json:"nodeName"`
	// owner is the CR this assignment works for.
	Owner OwnerReference `json:"owner"`
	// volume is what to mount.
	Volume Volume `json:"volume"`
	// source, when set, makes the agent push the volume.
	// +optional
	Source *SourceRole `json:"source,omitempty"`
	// destination, when set, makes the agent receive into the volume.
	// +optional
	Destination *DestinationRole `json:"destination,omitempty"`
	// syncGeneration numbers the sync this assignment is about. A source runs
	// sync syncGeneration once (a generation that status.lastSync already
	// reports is never run again). A destination accepts sync syncGeneration;
	// once it has ended, the agent holds new writers until the controller
	// raises syncGeneration (after it has cut its snapshot).
	// +kubebuilder:validation:Minimum=0
	SyncGeneration int64 `json:"syncGeneration"`
	// limits are the CR's moverResources limits (cpu, memory): they lower
	// the agent's own limits on each transfer's cgroup, never raise them.
	// +optional
	Limits corev1.ResourceList `json:"limits,omitempty"`
}

// ConditionReady is the condition that says whether the volume is mounted as
// asked; its reason and message say what is wrong when it is not.
const ConditionReady = "Ready"

// Finalizer keeps an assignment until its node's agent has unmounted the
// volume and stopped serving it.
const Finalizer = "agent.ferrysync.io/unmount"

// Phase is where an assignment is in its life on the node.
// +kubebuilder:validation:Enum=Pending;Mounted;Queued;Transferring;Holding;Completed;Failed;Refused
type Phase string

const (
	// PhasePending: the agent has not acted yet.
	PhasePending Phase = "Pending"
	// PhaseMounted: the volume is mounted; a destination accepts syncs.
	PhaseMounted Phase = "Mounted"
	// PhaseQueued: a source waits for a free transfer slot on the node.
	PhaseQueued Phase = "Queued"
	// PhaseTransferring: a sync is running.
	PhaseTransferring Phase = "Transferring"
	// PhaseHolding: a destination's sync ended and the volume is held
	// unchanged until the controller raises spec.syncGeneration.
	PhaseHolding Phase = "Holding"
	// PhaseCompleted: a source's sync ended and its volume is unmounted.
	PhaseCompleted Phase = "Completed"
	// PhaseFailed: the agent could not carry out the assignment; the Ready
	// condition says why. It retries.
	PhaseFailed Phase = "Failed"
	// PhaseRefused: the agent will not carry out the assignment (for example
	// the PV is not owned by the named CR); it does not retry.
	PhaseRefused Phase = "Refused"
)

// SyncResult is the outcome of one sync.
type SyncResult struct {
	// generation is the spec.syncGeneration this sync ran for.
	Generation int64 `json:"generation"`
	// succeeded is true when rsync completed and the data is consistent.
	Succeeded bool `json:"succeeded"`
	// startTime is when the transfer started.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`
	// endTime is when it ended.
	// +optional
	EndTime *metav1.Time `json:"endTime,omitempty"`
	// bytesSent over the wire by this side.
	// +optional
	BytesSent int64 `json:"bytesSent,omitempty"`
	// bytesReceived over the wire by this side.
	// +optional
	BytesReceived int64 `json:"bytesReceived,omitempty"`
	// filesTransferred is the number of regular files whose data was sent.
	// +optional
	FilesTransferred int64 `json:"filesTransferred,omitempty"`
	// exitCode is rsync's exit code (or the N of `shutdown N`).
	// +optional
	ExitCode int32 `json:"exitCode,omitempty"`
	// error says why the sync failed.
	// +optional
	Error string `json:"error,omitempty"`
	// summary is rsync's summary lines.
	// +optional
	Summary string `json:"summary,omitempty"`
}

// SyncProgress is the live progress of a running sync, updated at a bounded
// rate.
type SyncProgress struct {
	// generation of the running sync.
	Generation int64 `json:"generation"`
	// startTime of the running sync.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`
	// bytesDone so far.
	// +optional
	BytesDone int64 `json:"bytesDone,omitempty"`
	// filesDone so far.
	// +optional
	FilesDone int64 `json:"filesDone,omitempty"`
	// bytesPerSecond is the recent throughput.
	// +optional
	BytesPerSecond int64 `json:"bytesPerSecond,omitempty"`
	// attempt is the try number of the running sync, from 1.
	// +optional
	Attempt int32 `json:"attempt,omitempty"`
}

// Endpoint is where the node's ssh endpoint listens.
type Endpoint struct {
	// address is the node address the endpoint listens on.
	Address string `json:"address"`
	// port of the endpoint.
	Port int32 `json:"port"`
}

// MountAssignmentStatus is what the agent did with an assignment.
type MountAssignmentStatus struct {
	// observedGeneration is the metadata.generation the agent last acted on.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// phase is where the assignment is on the node.
	// +optional
	Phase Phase `json:"phase,omitempty"`
	// mountPath is where the agent has the volume mounted on the node.
	// +optional
	MountPath string `json:"mountPath,omitempty"`
	// endpoint is where a destination accepts syncs.
	// +optional
	Endpoint *Endpoint `json:"endpoint,omitempty"`
	// currentSync is the running sync's progress.
	// +optional
	CurrentSync *SyncProgress `json:"currentSync,omitempty"`
	// lastSync is the result of the latest sync that ended.
	// +optional
	LastSync *SyncResult `json:"lastSync,omitempty"`
	// conditions: Ready (the volume is mounted as asked) with a reason and a
	// message when it is not.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// MountAssignment asks one node's agent to mount one volume and to run or
// accept its syncs. The controller writes it; the agent carries it out.
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Namespaced,shortName=ma
// +kubebuilder:subresource:status
// +kubebuilder:selectablefield:JSONPath=`.spec.nodeName`
// +kubebuilder:printcolumn:name="Node",type="string",JSONPath=`.spec.nodeName`
// +kubebuilder:printcolumn:name="Owner",type="string",JSONPath=`.spec.owner.name`
// +kubebuilder:printcolumn:name="Sync",type="integer",JSONPath=`.spec.syncGeneration`
// +kubebuilder:printcolumn:name="Phase",type="string",JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Age",type="date",JSONPath=`.metadata.creationTimestamp`
type MountAssignment struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is what the controller asks.
	Spec MountAssignmentSpec `json:"spec"`
	// status is what the agent did.
	// +optional
	Status MountAssignmentStatus `json:"status,omitempty"`
}

// MountAssignmentList is a list of MountAssignments.
// +kubebuilder:object:root=true
type MountAssignmentList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MountAssignment `json:"items"`
}
