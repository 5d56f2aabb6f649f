package v1alpha1

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CopyMethodType says how the point-in-time copy of a volume is made. The
// allowed values differ per kind (a destination cannot Clone), so each field
// that uses this type carries its own enum.
type CopyMethodType string

const (
	// CopyMethodDirect uses the live volume itself, without a copy.
	CopyMethodDirect CopyMethodType = "Direct"
	// CopyMethodNone is VolSync's older name for Direct; Ferry treats the two
	// alike.
	CopyMethodNone CopyMethodType = "None"
	// CopyMethodClone copies the source volume with a CSI clone (a PVC whose
	// dataSource is the source PVC).
	CopyMethodClone CopyMethodType = "Clone"
	// CopyMethodSnapshot copies through a VolumeSnapshot: on a source, a PVC
	// restored from it; on a destination, the snapshot is the kept image.
	CopyMethodSnapshot CopyMethodType = "Snapshot"
)

// IsDirect reports whether the method works on the live volume (Direct, or
// its alias None).
func (m CopyMethodType) IsDirect() bool {
	return m == CopyMethodDirect || m == CopyMethodNone
}

// PrivilegedMoversAnnotation is the namespace annotation that allows
// transfers which preserve ownership, setuid bits and device nodes, as
// VolSync's rsync mover requires it.
const PrivilegedMoversAnnotation = "volsync.backube/privileged-movers"

// CompressionAnnotation on a ReplicationSource overrides how Ferry's
// sender compresses: zstd (at rsync's default level), zstd:LEVEL, lz4,
// zlib, zlib:LEVEL or none; without it, zstd at level 3. An annotation, not
// a spec field, so that the CR stays valid for VolSync, which ignores it.
const CompressionAnnotation = "ferrysync.io/compression"

// BandwidthLimitAnnotation on a ReplicationSource caps what its transfers
// send, in bytes per second on the wire (after compression), as a
// Kubernetes quantity: "10Mi" is 10 MiB/s, "500k" 500,000 bytes/s. For WAN
// links; the node agent's --max-bandwidth caps a node's transfers together.
// An annotation, as CompressionAnnotation, so the CR stays VolSync's.
const BandwidthLimitAnnotation = "ferrysync.io/bandwidth-limit"

// BandwidthLimit reads BandwidthLimitAnnotation from annotations: bytes per
// second, 0 when there is none.
func BandwidthLimit(annotations map[string]string) (int64, error) {
	v, ok := annotations[BandwidthLimitAnnotation]
	if !ok {
		return 0, nil
	}
	return ParseBandwidth(v)
}

// ParseBandwidth reads a rate in bytes per second written as a positive
// quantity ("10Mi"): the annotation's, and the agent's --max-bandwidth.
func ParseBandwidth(v string) (int64, error) {
	q, err := resource.ParseQuantity(v)
	if err != nil || q.Sign() <= 0 {
		return 0, fmt.Errorf("%q is not a rate: give bytes per second as a positive quantity, for example 10Mi", v)
	}
	return q.Value(), nil
}

// PrivilegedMovers says whether namespace ns allows privileged transfers.
// The controller decides with it and the node agent decides again, so that
// an assignment written by someone else cannot grant what the namespace
// does not.
func PrivilegedMovers(ns *corev1.Namespace) bool {
	return ns.Annotations[PrivilegedMoversAnnotation] == "true"
}

// Condition types and reasons, as VolSync sets them, so that tooling which
// waits on them works against Ferry.
const (
	// ConditionReconciled is True when the controller has brought the CR's
	// objects in line with its spec.
	ConditionReconciled = "Reconciled"
	// ReconciledReasonComplete is the reason of a True Reconciled condition.
	ReconciledReasonComplete = "ReconcileComplete"
	// ReconciledReasonError is the reason of a False Reconciled condition; its
	// message says what went wrong and what to change.
	ReconciledReasonError = "Error"

	// ConditionSynchronizing tells whether a sync is running now or what the
	// CR is waiting for.
	ConditionSynchronizing = "Synchronizing"
	// SynchronizingReasonSync means a sync is in progress.
	SynchronizingReasonSync = "SyncInProgress"
	// SynchronizingReasonSched means the CR waits for its next scheduled time.
	SynchronizingReasonSched = "WaitingForSchedule"
	// SynchronizingReasonManual means the CR waits for a new manual trigger.
	SynchronizingReasonManual = "WaitingForManual"
	// SynchronizingReasonCleanup means a sync finished and its temporary
	// objects are being removed.
	SynchronizingReasonCleanup = "CleaningUp"
	// SynchronizingReasonError means the last attempt failed; the message says
	// why.
	SynchronizingReasonError = "Error"
)

// TriggerSpec says when a sync runs. With neither field set, syncs run back
// to back.
type TriggerSpec struct {
	// schedule is a cronspec (https://en.wikipedia.org/wiki/Cron#Overview)
	// that starts a sync at regular times: five fields (minute hour
	// day-of-month month day-of-week) such as "*/5 * * * *", or one of
	// @hourly, @daily, @weekly, @monthly, @yearly, @annually.
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:XValidation:rule="self.matches('^(@(annually|yearly|monthly|weekly|daily|hourly)|([*]|[0-9]+(-[0-9]+)?|[A-Za-z]{3}(-[A-Za-z]{3})?)(/[0-9]+)?(,([*]|[0-9]+(-[0-9]+)?|[A-Za-z]{3}(-[A-Za-z]{3})?)(/[0-9]+)?)*([ \t]+([*]|[0-9]+(-[0-9]+)?|[A-Za-z]{3}(-[A-Za-z]{3})?)(/[0-9]+)?(,([*]|[0-9]+(-[0-9]+)?|[A-Za-z]{3}(-[A-Za-z]{3})?)(/[0-9]+)?)*){4})$')",message="must be a cron schedule of five fields (minute hour day-of-month month day-of-week), such as \"*/5 * * * *\", or one of @hourly, @daily, @weekly, @monthly, @yearly"
	// +optional
	Schedule *string `json:"schedule,omitempty"`
	// manual starts one sync each time it is set to a new value; when that
	// sync completes, status.lastManualSync is set to the same value. Set it
	// to a fresh value and wait for lastManualSync to match.
	// +optional
	Manual string `json:"manual,omitempty"`
}

// MoverConfig holds VolSync's mover pod settings. Ferry runs no mover pod:
// moverResources become cgroup limits on the transfer's processes on the
// node; the other fields are accepted so VolSync manifests apply, and have no
// effect.
type MoverConfig struct {
	// moverSecurityContext is VolSync's PodSecurityContext for its mover pod.
	// Ferry runs no mover pod: where the namespace does not allow privileged
	// movers (volsync.backube/privileged-movers), a destination's rsync runs
	// as runAsUser (group runAsGroup, else fsGroup), or 65532 without one,
	// and drops setuid and setgid bits; user or group 0 is refused there.
	// The other fields have no effect.
	// +optional
	MoverSecurityContext *corev1.PodSecurityContext `json:"moverSecurityContext,omitempty"`
	// moverServiceAccount is VolSync's service account for its mover pod.
	// Ferry runs no mover pod: accepted, no effect.
	// +optional
	MoverServiceAccount *string `json:"moverServiceAccount,omitempty"`
	// moverPodLabels are VolSync's extra labels for its mover pod. Ferry runs
	// no mover pod: accepted, no effect.
	// +optional
	MoverPodLabels map[string]string `json:"moverPodLabels,omitempty"`
	// moverResources limits the compute resources of a transfer. Ferry applies
	// the cpu and memory limits to the cgroup of the transfer's processes on
	// the node (lowering the node agent's own limits, never raising them); a
	// transfer past its memory limit fails and says so. Requests have no
	// effect: there is no pod to schedule.
	// +optional
	MoverResources *corev1.ResourceRequirements `json:"moverResources,omitempty"`
	// moverAffinity is VolSync's affinity for its mover pod. Ferry places a
	// transfer on the node that has the volume: accepted, no effect.
	// +optional
	MoverAffinity *corev1.Affinity `json:"moverAffinity,omitempty"`
}

// MoverResult is the outcome of the latest transfer.
// +kubebuilder:validation:Enum=Successful;Failed
type MoverResult string

const (
	// MoverResultSuccessful means the latest transfer completed.
	MoverResultSuccessful MoverResult = "Successful"
	// MoverResultFailed means the latest transfer failed; logs say why.
	MoverResultFailed MoverResult = "Failed"
)

// MoverStatus reports the latest transfer, as VolSync does for its mover job.
type MoverStatus struct {
	// result is Successful or Failed.
	// +optional
	Result MoverResult `json:"result,omitempty"`
	// logs are rsync's summary lines of the latest transfer (or its error).
	// +optional
	Logs string `json:"logs,omitempty"`
}

// OtherMoversStatus keeps what VolSync's other movers write in a CR's
// status. Ferry's CRDs replace VolSync's and must be a superset of them: a
// VolSync that still serves restic or rclone CRs beside Ferry would
// otherwise see the apiserver prune its status fields. Ferry never reads
// or writes them.
type OtherMoversStatus struct {
	// rsyncTLS is VolSync's rsync-over-TLS mover's status.
	// +kubebuilder:validation:Type=object
	// +kubebuilder:pruning:PreserveUnknownFields
	// +optional
	RsyncTLS *apiextensionsv1.JSON `json:"rsyncTLS,omitempty"`
	// rclone is VolSync's rclone mover's status.
	// +kubebuilder:validation:Type=object
	// +kubebuilder:pruning:PreserveUnknownFields
	// +optional
	Rclone *apiextensionsv1.JSON `json:"rclone,omitempty"`
	// restic is VolSync's restic mover's status.
	// +kubebuilder:validation:Type=object
	// +kubebuilder:pruning:PreserveUnknownFields
	// +optional
	Restic *apiextensionsv1.JSON `json:"restic,omitempty"`
	// syncthing is VolSync's syncthing mover's status.
	// +kubebuilder:validation:Type=object
	// +kubebuilder:pruning:PreserveUnknownFields
	// +optional
	Syncthing *apiextensionsv1.JSON `json:"syncthing,omitempty"`
	// kopia is VolSync's kopia mover's status.
	// +kubebuilder:validation:Type=object
	// +kubebuilder:pruning:PreserveUnknownFields
	// +optional
	Kopia *apiextensionsv1.JSON `json:"kopia,omitempty"`
	// external is an external provider's status.
	// +optional
	External map[string]string `json:"external,omitempty"`
}

// SyncStatus is the part of the status both kinds share: when syncs ran and
// how the latest went. One schedule and condition logic serves both.
type SyncStatus struct {
	// lastSyncTime is when the most recent successful sync completed.
	// +optional
	LastSyncTime *metav1.Time `json:"lastSyncTime,omitempty"`
	// lastSyncStartTime is when the most recent sync started.
	// +optional
	LastSyncStartTime *metav1.Time `json:"lastSyncStartTime,omitempty"`
	// lastSyncDuration is how long the most recent successful sync took.
	// +optional
	LastSyncDuration *metav1.Duration `json:"lastSyncDuration,omitempty"`
	// nextSyncTime is when the next scheduled sync starts.
	// +optional
	NextSyncTime *metav1.Time `json:"nextSyncTime,omitempty"`
	// lastManualSync echoes spec.trigger.manual once the sync it asked for
	// has completed.
	// +optional
	LastManualSync string `json:"lastManualSync,omitempty"`
	// latestMoverStatus is the result and rsync summary of the latest
	// transfer.
	// +optional
	LatestMoverStatus *MoverStatus `json:"latestMoverStatus,omitempty"`
	// progress is Ferry's own report of the running transfer (VolSync has no
	// such field; its clients ignore it): how much has moved so far, so that
	// a long sync is seen moving rather than guessed at.
	// +optional
	Progress *TransferProgress `json:"progress,omitempty"`
	// conditions are the latest observations of the CR's state: Reconciled
	// and Synchronizing.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// TransferProgress is the live progress of a running transfer, as the node
// agent reports it.
type TransferProgress struct {
	// node is where the transfer runs.
	// +optional
	Node string `json:"node,omitempty"`
	// bytesDone so far in this sync.
	// +optional
	BytesDone int64 `json:"bytesDone,omitempty"`
	// filesDone so far in this sync.
	// +optional
	FilesDone int64 `json:"filesDone,omitempty"`
	// bytesPerSecond is the recent throughput.
	// +optional
	BytesPerSecond int64 `json:"bytesPerSecond,omitempty"`
	// attempt is the try of the running transfer, from 1.
	// +optional
	Attempt int32 `json:"attempt,omitempty"`
}
