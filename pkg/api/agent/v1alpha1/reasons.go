package v1alpha1

// Reasons of the Ready condition and of the events the agent records on an
// assignment. Tests and the controller match on these, so they are part of
// the API.
const (
	// ReasonWaiting: a source waits for a sync to be asked for.
	ReasonWaiting = "Waiting"
	// ReasonWaitingForAttach: the driver requires attach and the controller's
	// VolumeAttachment is not there yet.
	ReasonWaitingForAttach = "WaitingForAttach"
	// ReasonServing: a destination is mounted and accepts syncs (also the
	// event when it starts serving).
	ReasonServing = "Serving"
	// ReasonQueued: a source waits for a transfer slot on the node.
	ReasonQueued = "Queued"
	// ReasonTransferring: a source's copy is mounted and being sent.
	ReasonTransferring = "Transferring"
	// ReasonSyncSucceeded: the last sync succeeded (also its event).
	ReasonSyncSucceeded = "SyncSucceeded"
	// ReasonSyncFailed: the last sync failed (also its event); Ready is
	// False.
	ReasonSyncFailed = "SyncFailed"
	// ReasonSyncInterrupted: the agent stopped during the sync (also its
	// event); it is not run again.
	ReasonSyncInterrupted = "SyncInterrupted"
	// ReasonFailed: the agent could not carry out the assignment and
	// retries.
	ReasonFailed = "Failed"
	// ReasonRefused: the agent will not carry out the assignment (also its
	// event).
	ReasonRefused = "Refused"
)

// Causes of the agent's ferry_agent_errors_total metric: one list, used by
// the code that counts and by the metric's help text.
const (
	// CauseRefused: an assignment was refused.
	CauseRefused = "refused"
	// CauseFailed: carrying out an assignment failed (and is retried).
	CauseFailed = "failed"
	// CausePublish: mounting a source's copy failed.
	CausePublish = "publish"
	// CauseTransfer: a transfer failed.
	CauseTransfer = "transfer"
	// CauseInterrupted: a sync was cut off by the agent stopping.
	CauseInterrupted = "interrupted"
	// CauseEndpoint: a destination could not be served.
	CauseEndpoint = "endpoint"
	// CauseRefusedRequest: the endpoint refused a client's request.
	CauseRefusedRequest = "refused-request"
	// CauseOOMKilled: a transfer was killed past its memory limit
	// (--transfer-memory-limit, or the CR's moverResources).
	CauseOOMKilled = "oom-killed"
)

// Causes lists every cause, for the metric's help text.
var Causes = []string{CauseRefused, CauseFailed, CausePublish, CauseTransfer, CauseInterrupted, CauseEndpoint, CauseRefusedRequest, CauseOOMKilled}
