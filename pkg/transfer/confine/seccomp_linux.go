package confine

import (
	"fmt"
	"unsafe"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// refused are system calls rsync (and the remote-shell helper a sender
// starts) never makes, and that a process holding a capability or two could
// use to leave the confinement or reach the kernel's larger surfaces: file
// handles (open_by_handle_at reaches past a bind mount), mounts and
// namespaces, other processes' memory, bpf, keyrings, modules, io_uring
// (which bypasses this filter), and the clock.
var refused = []string{
	"open_by_handle_at", "name_to_handle_at",
	"mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree",
	"fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
	"unshare", "setns",
	"ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
	"bpf", "perf_event_open", "userfaultfd",
	"keyctl", "add_key", "request_key",
	"init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
	"io_uring_setup", "io_uring_enter", "io_uring_register",
	"reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "iopl", "ioperm",
	"settimeofday", "clock_settime", "adjtimex", "clock_adjtime",
	"fanotify_init", "lookup_dcookie", "vhangup",
}

// newNamespaces are clone's flags that make namespaces; fork and threads
// never set them.
const newNamespaces = unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWUSER |
	unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP

// policy refuses the calls above with EPERM, clone with namespace flags
// likewise, and clone3 (whose flags a filter cannot read) with ENOSYS, so
// that the C library falls back to clone.
func policy() seccomp.Policy {
	return seccomp.Policy{
		DefaultAction: seccomp.ActionAllow,
		Syscalls: []seccomp.SyscallGroup{
			{Action: seccomp.ActionErrno, Names: refused},
			{Action: seccomp.ActionErrno, NamesWithCondtions: []seccomp.NameWithConditions{{
				Name: "clone", Conditions: seccomp.ArgumentConditions{{Argument: 0, Operation: seccomp.BitsSet, Value: newNamespaces}},
			}}},
			{Action: seccomp.ActionErrno | seccomp.Action(unix.ENOSYS), Names: []string{"clone3"}},
		},
	}
}

// archOffset is where seccomp_data holds the calling convention's
// AUDIT_ARCH_* value (after the 4-byte call number).
const archOffset = 4

// foreignCall is the answer to a call made in another architecture's
// convention (int 0x80 on x86_64, AArch32 on arm64): EPERM.
const foreignCall = uint32(seccomp.ActionErrno) | uint32(unix.EPERM)

// program is the filter: a call in any convention but the native one is
// refused before anything else is looked at, then policy applies.
//
// The gate is needed because the assembled policy jumps to its default
// action, Allow, for a foreign architecture: through int 0x80 every call
// on the list above (whose numbers differ in the 32-bit table) would pass.
// An allow-list would close that door too, but would tie the filter to one
// C library's choice of calls; a deny-list behind a native-only gate does
// not. (x32, the native architecture with bit 30 set in the number, is
// refused by the assembled policy itself.)
func program() ([]bpf.Instruction, error) {
	native, err := arch.GetInfo("")
	if err != nil {
		return nil, fmt.Errorf("this architecture's seccomp numbers: %w", err)
	}
	p := policy()
	body, err := p.Assemble()
	if err != nil {
		return nil, fmt.Errorf("assemble seccomp policy: %w", err)
	}
	gate := []bpf.Instruction{
		bpf.LoadAbsolute{Off: archOffset, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(native.ID), SkipTrue: 1},
		bpf.RetConstant{Val: foreignCall},
	}
	return append(gate, body...), nil
}

// loadSeccomp sets no_new_privs and installs the filter on this thread, the
// one that execs rsync.
func loadSeccomp() error {
	insts, err := program()
	if err != nil {
		return err
	}
	raw, err := bpf.Assemble(insts)
	if err != nil {
		return fmt.Errorf("assemble seccomp filter: %w", err)
	}
	filter := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		filter[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	if _, _, errno := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0,
		uintptr(unsafe.Pointer(&prog))); errno != 0 {
		return fmt.Errorf("install seccomp filter: %w", errno)
	}
	return nil
}
