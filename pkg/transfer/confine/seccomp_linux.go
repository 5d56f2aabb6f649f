package confine

import (
	"fmt"

	seccomp "github.com/elastic/go-seccomp-bpf"
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

// loadSeccomp sets no_new_privs and installs the filter on this thread, the
// one that execs rsync.
func loadSeccomp() error {
	if err := seccomp.LoadFilter(seccomp.Filter{NoNewPrivs: true, Policy: policy()}); err != nil {
		return fmt.Errorf("install seccomp filter: %w", err)
	}
	return nil
}
