// Package fault lets the data plane's fault tests make any step of a sync
// fail, on either end, so that they can check what each end then reports
// and records. In a normal build (without the ferryfault tag) its hooks
// are empty functions the compiler inlines away: nothing of it runs in the
// product. Built with -tags ferryfault, a test installs an Injector (Set)
// that decides, at each named point, whether the step fails, and hears of
// each rsync started so that it can kill it mid-transfer.
package fault

import "errors"

// Point names a step of a sync where a fault can be injected.
type Point string

// The source's steps, in the order a push takes them.
const (
	// Dial: the source's ssh connection to the destination.
	Dial Point = "dial"
	// Offer: the source's digest offer; its answer is lost, as if the
	// destination never said the tree is unchanged.
	Offer Point = "offer"
	// RshSocket: the directory and socket of rsync's remote-shell helper.
	RshSocket Point = "rsh-socket"
	// SourceCgroup: the source rsync's cgroup.
	SourceCgroup Point = "source-cgroup"
	// SourceConfine: the source rsync's confinement.
	SourceConfine Point = "source-confine"
	// SourceStart: the source rsync's exec.
	SourceStart Point = "source-start"
	// SourceRsync: the source rsync, started (Started only).
	SourceRsync Point = "source-rsync"
	// Shutdown: the source's `shutdown N`, lost before it is sent.
	Shutdown Point = "shutdown"
)

// The destination's steps.
const (
	// Handshake: the destination's ssh handshake; the connection is closed.
	Handshake Point = "handshake"
	// Answer: the destination's answer to a digest offer; it says no.
	Answer Point = "answer"
	// ReceiverAdmit: a transfer request that passed the first look at the
	// hold, before it is admitted.
	ReceiverAdmit Point = "receiver-admit"
	// ReceiverCgroup: the receiver's cgroup.
	ReceiverCgroup Point = "receiver-cgroup"
	// ReceiverConfine: the receiver's confinement.
	ReceiverConfine Point = "receiver-confine"
	// ReceiverStart: the receiver's exec.
	ReceiverStart Point = "receiver-start"
	// Receiver: the receiving rsync, started (Started only).
	Receiver Point = "receiver"
	// ShutdownReply: the destination's reply to `shutdown N`, lost after
	// the destination ended the sync.
	ShutdownReply Point = "shutdown-reply"
)

// ErrInjected is the error of a step failed on purpose.
var ErrInjected = errors.New("fault injected")

// Injector decides the faults of a test.
type Injector interface {
	// At says whether the step at p fails (an error) or goes on (nil).
	At(p Point) error
	// Started hears of a process started at p.
	Started(p Point, pid int)
}
