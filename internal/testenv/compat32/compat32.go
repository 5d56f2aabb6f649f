// Package compat32 makes system calls the way a 32-bit x86 program does
// (int 0x80) from a 64-bit process, as an attacker who took over rsync
// would to slip past a seccomp filter written for the 64-bit numbers. Tests
// use it to prove the filter refuses the other convention.
package compat32

import "runtime"

// Supported says whether this build can make such calls: only on amd64.
const Supported = runtime.GOARCH == "amd64"
