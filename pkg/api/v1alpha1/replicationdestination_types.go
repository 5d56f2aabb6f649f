package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ReplicationDestinationVolumeOptions says which volume receives the data and
// what is kept after each sync.
type ReplicationDestinationVolumeOptions struct {
	// copyMethod says what is kept after each sync: Snapshot (a
	// VolumeSnapshot of the destination volume, named in status.latestImage)
	// or Direct (the destination PVC itself; None is the same).
	// +kubebuilder:validation:Enum=Direct;None;Snapshot
	CopyMethod CopyMethodType `json:"copyMethod"`
	// capacity is the size of the destination volume Ferry provisions. Give
	// it together with accessModes, or name an existing PVC in
	// destinationPVC.
	// +optional
	Capacity *resource.Quantity `json:"capacity,omitempty"`
	// storageClassName is the StorageClass of the provisioned destination
	// volume (default: the cluster's default class).
	// +optional
	StorageClassName *string `json:"storageClassName,omitempty"`
	// accessModes of the provisioned destination volume.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:items:Enum=ReadWriteOnce;ReadOnlyMany;ReadWriteMany;ReadWriteOncePod
	// +optional
	AccessModes []corev1.PersistentVolumeAccessMode `json:"accessModes,omitempty"`
	// volumeSnapshotClassName is the VolumeSnapshotClass of the snapshots
	// taken when copyMethod is Snapshot (default: the cluster's default class
	// for the driver).
	// +optional
	VolumeSnapshotClassName *string `json:"volumeSnapshotClassName,omitempty"`
	// destinationPVC names an existing PVC in this namespace to write into,
	// instead of one Ferry provisions.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	DestinationPVC *string `json:"destinationPVC,omitempty"`
	// volumeMode of the provisioned destination volume (default:
	// Filesystem).
	// +kubebuilder:validation:Enum=Block;Filesystem
	// +optional
	VolumeMode *corev1.PersistentVolumeMode `json:"volumeMode,omitempty"`
	// cleanupTempPVC deletes the destination PVC Ferry provisioned
	// (volsync-<name>-dst) at the end of each successful sync, once its
	// snapshot is latestImage; the next sync gets a new one, and so
	// receives all the data again. Ignored with destinationPVC or
	// copyMethod Direct. Defaults to false.
	// +optional
	CleanupTempPVC bool `json:"cleanupTempPVC,omitempty"`
}

// ReplicationDestinationRsyncSpec configures rsync-over-ssh replication from
// the destination side: it listens and the source pushes.
// +kubebuilder:validation:XValidation:rule="has(self.destinationPVC) || (has(self.capacity) && has(self.accessModes))",message="name an existing PVC in destinationPVC, or give both capacity and accessModes so Ferry can provision the destination volume"
type ReplicationDestinationRsyncSpec struct {
	ReplicationDestinationVolumeOptions `json:",inline"`
	// sshKeys is the name of a Secret in this namespace with the keys to use:
	// destination (private host key), destination.pub and source.pub (the one
	// key allowed in). Without it, keys are generated and the Secret the
	// source needs is named in status.rsync.sshKeys.
	// +optional
	SSHKeys *string `json:"sshKeys,omitempty"`
	// serviceType is the type of the Service the source connects to:
	// ClusterIP (default) or LoadBalancer.
	// +kubebuilder:validation:Enum=ClusterIP;LoadBalancer
	// +optional
	ServiceType *corev1.ServiceType `json:"serviceType,omitempty"`
	// serviceAnnotations are added to that Service, for load-balancer
	// controllers that read them.
	// +optional
	ServiceAnnotations map[string]string `json:"serviceAnnotations,omitempty"`
	// address is accepted for compatibility with VolSync, whose destination
	// can also pull from a listening source. Ferry's destination always
	// listens.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Address *string `json:"address,omitempty"`
	// port is the Service's ssh port. Defaults to 22.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=65535
	// +optional
	Port *int32 `json:"port,omitempty"`
	// path is accepted for compatibility with VolSync's pull mode; a source
	// chooses the directory it writes to with its own spec.rsync.path.
	// +kubebuilder:validation:MaxLength=4096
	// +optional
	Path *string `json:"path,omitempty"`
	// sshUser is accepted for compatibility with VolSync's pull mode. Defaults
	// to "root".
	// +kubebuilder:validation:MaxLength=256
	// +optional
	SSHUser     *string `json:"sshUser,omitempty"`
	MoverConfig `json:",inline"`
}

// ReplicationDestinationSpec is the desired state of a
// ReplicationDestination.
// +kubebuilder:validation:XValidation:rule="[has(self.rsync), has(self.rsyncTLS), has(self.rclone), has(self.restic), has(self.syncthing), has(self.kopia), has(self.external)].filter(x, x).size() == 1",message="set exactly one mover: rsync (the mover Ferry serves), or one of rsyncTLS, rclone, restic, syncthing, kopia, external"
type ReplicationDestinationSpec struct {
	// trigger is accepted for compatibility with VolSync's pull mode; an rsync
	// destination accepts a sync whenever its source pushes one.
	// +optional
	Trigger *TriggerSpec `json:"trigger,omitempty"`
	// rsync configures replication with rsync over ssh.
	// +optional
	Rsync *ReplicationDestinationRsyncSpec `json:"rsync,omitempty"`
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
	// paused releases the destination volume and refuses incoming syncs while
	// true. Defaults to false.
	// +optional
	Paused bool `json:"paused,omitempty"`
}

// ReplicationDestinationRsyncStatus is the rsync mover's part of the status:
// what the source needs to connect.
type ReplicationDestinationRsyncStatus struct {
	// address is where the source connects: the Service's ClusterIP or its
	// load-balancer address.
	// +optional
	Address *string `json:"address,omitempty"`
	// sshKeys names the Secret, in this namespace, to copy to the source's
	// namespace and name in its spec.rsync.sshKeys (when keys were generated).
	// +optional
	SSHKeys *string `json:"sshKeys,omitempty"`
	// port is the Service's ssh port.
	// +optional
	Port *int32 `json:"port,omitempty"`
}

// ReplicationDestinationStatus is the observed state of a
// ReplicationDestination.
type ReplicationDestinationStatus struct {
	SyncStatus `json:",inline"`
	// latestImage is the most recent complete copy of the data: a
	// VolumeSnapshot for copyMethod Snapshot, the PVC for Direct. It only ever
	// names data from a complete sync.
	// +optional
	LatestImage *corev1.TypedLocalObjectReference `json:"latestImage,omitempty"`
	// rsync is what a source needs to connect.
	// +optional
	Rsync *ReplicationDestinationRsyncStatus `json:"rsync,omitempty"`
	// What VolSync's other movers write, kept as it is.
	OtherMoversStatus `json:",inline"`
}

// ReplicationDestination receives replicated data into a volume, keeping a
// point-in-time image after each complete sync.
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Namespaced
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Last sync",type="string",format="date-time",JSONPath=`.status.lastSyncTime`
// +kubebuilder:printcolumn:name="Duration",type="string",JSONPath=`.status.lastSyncDuration`
// +kubebuilder:printcolumn:name="Next sync",type="string",format="date-time",JSONPath=`.status.nextSyncTime`
// +kubebuilder:printcolumn:name="Status",type="string",priority=1,JSONPath=`.status.conditions[?(@.type=="Synchronizing")].reason`
// +kubebuilder:printcolumn:name="Moved",type="integer",priority=1,JSONPath=`.status.progress.bytesDone`
type ReplicationDestination struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec says which volume receives the data and how it is reached.
	Spec ReplicationDestinationSpec `json:"spec"`
	// status is what the controller observed, including the address and keys
	// a source needs.
	// +optional
	Status ReplicationDestinationStatus `json:"status,omitempty"`
}

// ReplicationDestinationList is a list of ReplicationDestinations.
// +kubebuilder:object:root=true
type ReplicationDestinationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ReplicationDestination `json:"items"`
}
