//go:build !amd64

package compat32

import "syscall"

// Syscall is not available off amd64 (see Supported): it returns -ENOSYS.
func Syscall(nr, a1, a2, a3 uintptr) int32 { return -int32(syscall.ENOSYS) }
