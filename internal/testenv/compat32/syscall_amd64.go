package compat32

// Syscall makes 32-bit x86 system call nr with three arguments through
// int 0x80 and returns what the kernel put in eax, sign-extended: a
// negative errno on failure. On a kernel without 32-bit emulation the
// instruction faults and the process dies of SIGSEGV, so callers try it
// in a child process first.
func Syscall(nr, a1, a2, a3 uintptr) int32
