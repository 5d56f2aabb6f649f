package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ReplicationSourceVolumeOptions says how the point-in-time copy of the
// source volume is made.
type ReplicationSourceVolumeOptions struct {
	// copyMethod says how the point-in-time copy of the source volume is made:
	// Clone (a CSI clone of the PVC), Snapshot (a VolumeSnapshot restored to a
	// temporary PVC), or Direct (the live PVC; None is the same).
	// +kubebuilder:validation:Enum=Direct;None;Clone;Snapshot
	CopyMethod CopyMethodType `json:"copyMethod"`
	// capacity overrides the size of the point-in-time copy (default: the
	// source PVC's size).
	// +optional
	Capacity *resource.Quantity `json:"capacity,omitempty"`
	// storageClassName overrides the StorageClass of the point-in-time copy
	// (default: the source PVC's class).
	// +optional
	StorageClassName *string `json:"storageClassName,omitempty"`
	// accessModes overrides the access modes of the point-in-time copy
	// (default: the source PVC's).
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:items:Enum=ReadWriteOnce;ReadOnlyMany;ReadWriteMany;ReadWriteOncePod
	// +optional
	AccessModes []corev1.PersistentVolumeAccessMode `json:"accessModes,omitempty"`
	// volumeSnapshotClassName is the VolumeSnapshotClass used when copyMethod
	// is Snapshot (default: the cluster's default class for the driver).
	// +optional
	VolumeSnapshotClassName *string `json:"volumeSnapshotClassName,omitempty"`
	// volumeMode overrides the volume mode of the point-in-time copy
	// (default: the source PVC's).
	// +kubebuilder:validation:Enum=Block;Filesystem
	// +optional
	VolumeMode *corev1.PersistentVolumeMode `json:"volumeMode,omitempty"`
}

// ReplicationSourceRsyncSpec configures rsync-over-ssh replication from the
// source side: the source connects to the destination and pushes.
type ReplicationSourceRsyncSpec struct {
	ReplicationSourceVolumeOptions `json:",inline"`
	// sshKeys is the name of a Secret in this namespace with the keys copied
	// from the destination's status.rsync.sshKeys Secret: source (private),
	// source.pub and destination.pub (pinned as the destination's host key).
	// +optional
	SSHKeys *string `json:"sshKeys,omitempty"`
	// serviceType is accepted for compatibility with VolSync, whose source can
	// also listen for a destination that pulls. Ferry's source always pushes.
	// +kubebuilder:validation:Enum=ClusterIP;LoadBalancer
	// +optional
	ServiceType *corev1.ServiceType `json:"serviceType,omitempty"`
	// address is the destination's ssh address, usually the destination's
	// status.rsync.address.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Address *string `json:"address,omitempty"`
	// port is the destination's ssh port. Defaults to 22.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=65535
	// +optional
	Port *int32 `json:"port,omitempty"`
	// path is the directory within the destination volume to write to.
	// Defaults to "/", which makes the destination a replica of the source.
	// +kubebuilder:validation:MaxLength=4096
	// +optional
	Path *string `json:"path,omitempty"`
	// sshUser is the user name for the ssh connection. Defaults to "root".
	// +kubebuilder:validation:MaxLength=256
	// +optional
	SSHUser     *string `json:"sshUser,omitempty"`
	MoverConfig `json:",inline"`
}

// ReplicationSourceSpec is the desired state of a ReplicationSource.
// +kubebuilder:validation:XValidation:rule="[has(self.rsync), has(self.rsyncTLS), has(self.rclone), has(self.restic), has(self.syncthing), has(self.kopia), has(self.external)].filter(x, x).size() == 1",message="set exactly one mover: rsync (the mover Ferry serves), or one of rsyncTLS, rclone, restic, syncthing, kopia, external"
type ReplicationSourceSpec struct {
	// sourcePVC is the name of the PersistentVolumeClaim, in this namespace,
	// to replicate.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	SourcePVC string `json:"sourcePVC"`
	// trigger says when a sync runs. Without it, syncs run back to back.
	// +optional
	Trigger *TriggerSpec `json:"trigger,omitempty"`
	// rsync configures replication with rsync over ssh.
	// +optional
	Rsync *ReplicationSourceRsyncSpec `json:"rsync,omitempty"`
	// rsyncTLS is VolSync's rsync-over-TLS mover: not served by Ferry.
	// +kubebuilder:validation:Type=object
	// +kubebuilder:pruning:PreserveUnknownFields
	// +optional
	RsyncTLS *apiextensionsv1.JSON `json:"rsyncTLS,omitempty"`
	// rclone is VolSync's rclone mover: not served by Ferry.
	// +kubebuilder:validation:Type=object
	// +kubebuilder:pruning:PreserveUnknownFields
	// +optional
	Rclone *apiextensionsv1.JSON `json:"rclone,omitempty"`
	// restic is VolSync's restic mover: not served by Ferry.
	// +kubebuilder:validation:Type=object
	// +kubebuilder:pruning:PreserveUnknownFields
	// +optional
	Restic *apiextensionsv1.JSON `json:"restic,omitempty"`
	// syncthing is VolSync's syncthing mover: not served by Ferry.
	// +kubebuilder:validation:Type=object
	// +kubebuilder:pruning:PreserveUnknownFields
	// +optional
	Syncthing *apiextensionsv1.JSON `json:"syncthing,omitempty"`
	// kopia is VolSync's kopia mover: not served by Ferry.
	// +kubebuilder:validation:Type=object
	// +kubebuilder:pruning:PreserveUnknownFields
	// +optional
	Kopia *apiextensionsv1.JSON `json:"kopia,omitempty"`
	// external hands replication to an external provider: not served by
	// Ferry.
	// +kubebuilder:validation:Type=object
	// +kubebuilder:pruning:PreserveUnknownFields
	// +optional
	External *apiextensionsv1.JSON `json:"external,omitempty"`
	// paused stops new syncs from starting while true; a running sync
	// finishes. Defaults to false.
	// +optional
	Paused bool `json:"paused,omitempty"`
}

// ReplicationSourceRsyncStatus is the rsync mover's part of the status.
type ReplicationSourceRsyncStatus struct {
	// sshKeys names the Secret with the keys the other side needs, when the
	// keys were generated here.
	// +optional
	SSHKeys *string `json:"sshKeys,omitempty"`
	// address is where this side listens for ssh, when it listens.
	// +optional
	Address *string `json:"address,omitempty"`
	// port is the port that goes with address.
	// +optional
	Port *int32 `json:"port,omitempty"`
}

// ReplicationSourceStatus is the observed state of a ReplicationSource.
type ReplicationSourceStatus struct {
	SyncStatus `json:",inline"`
	// rsync is the rsync mover's status.
	// +optional
	Rsync *ReplicationSourceRsyncStatus `json:"rsync,omitempty"`
	// What VolSync's other movers write, kept as it is.
	OtherMoversStatus `json:",inline"`
}

// ReplicationSource replicates a PersistentVolumeClaim to a
// ReplicationDestination, on a schedule or on a manual trigger.
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Namespaced
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Source",type="string",JSONPath=`.spec.sourcePVC`
// +kubebuilder:printcolumn:name="Last sync",type="string",format="date-time",JSONPath=`.status.lastSyncTime`
// +kubebuilder:printcolumn:name="Duration",type="string",JSONPath=`.status.lastSyncDuration`
// +kubebuilder:printcolumn:name="Next sync",type="string",format="date-time",JSONPath=`.status.nextSyncTime`
// +kubebuilder:printcolumn:name="Status",type="string",priority=1,JSONPath=`.status.conditions[?(@.type=="Synchronizing")].reason`
// +kubebuilder:printcolumn:name="Moved",type="integer",priority=1,JSONPath=`.status.progress.bytesDone`
type ReplicationSource struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec says what to replicate, when, and how.
	Spec ReplicationSourceSpec `json:"spec"`
	// status is what the controller observed.
	// +optional
	Status ReplicationSourceStatus `json:"status,omitempty"`
}

// ReplicationSourceList is a list of ReplicationSources.
// +kubebuilder:object:root=true
type ReplicationSourceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ReplicationSource `json:"items"`
}
