package confine_test

import (
	"encoding/binary"
	"testing"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/ferrysync/ferry/pkg/transfer/confine"
)

// compat is the 32-bit calling convention a 64-bit kernel may also accept
// (int 0x80 on x86_64, AArch32 on arm64).
var compat = map[string]*arch.Info{"x86_64": arch.I386, "aarch64": arch.ARM}

// seccompData is the kernel's struct seccomp_data for a call on a
// little-endian machine, as the interpreter reads it: the interpreter loads
// words in network order where the kernel loads them in the machine's, so
// each 32-bit word is written big-endian where the kernel has it.
func seccompData(a *arch.Info, nr uint32, args ...uint64) []byte {
	b := make([]byte, 64)
	binary.BigEndian.PutUint32(b[0:], nr)
	binary.BigEndian.PutUint32(b[4:], uint32(a.ID))
	for i, v := range args {
		binary.BigEndian.PutUint32(b[16+8*i:], uint32(v))
		binary.BigEndian.PutUint32(b[20+8*i:], uint32(v>>32))
	}
	return b
}

// TestFilterRefusesBothConventions runs the filter program the helper
// installs through a BPF interpreter, as the kernel would: every refused
// call is refused when made the native way and when made through the
// 32-bit convention (where, before the architecture gate, the assembled
// policy fell through to Allow), as is every 32-bit or x32 call at all;
// what rsync makes passes.
func TestFilterRefusesBothConventions(t *testing.T) {
	native, err := arch.GetInfo("")
	require.NoError(t, err)
	foreign := compat[native.Name]
	require.NotNil(t, foreign, "no 32-bit convention known for %s", native.Name)
	insts, err := confine.Program()
	require.NoError(t, err)
	vm, err := bpf.NewVM(insts)
	require.NoError(t, err)
	action := func(a *arch.Info, nr uint32, args ...uint64) seccomp.Action {
		ret, err := vm.Run(seccompData(a, nr, args...))
		require.NoError(t, err)
		return seccomp.Action(uint32(ret) & 0xffff0000)
	}
	number := func(a *arch.Info, name string) (uint32, bool) {
		n, ok := a.SyscallNames[name]
		return uint32(n), ok
	}

	for _, name := range append(confine.Refused, "clone3") {
		nr, ok := number(native, name)
		require.True(t, ok, name)
		assert.Equal(t, seccomp.ActionErrno, action(native, nr), "%s, native", name)
		if nr, ok := number(foreign, name); ok {
			assert.Equal(t, seccomp.ActionErrno, action(foreign, nr), "%s through %s", name, foreign.Name)
		}
	}
	for _, name := range []string{"getpid", "openat", "read", "write", "fchownat", "mknodat"} {
		nr, ok := number(native, name)
		require.True(t, ok, name)
		assert.Equal(t, seccomp.ActionAllow, action(native, nr), "%s, native: rsync needs it", name)
		if nr, ok := number(foreign, name); ok {
			assert.Equal(t, seccomp.ActionErrno, action(foreign, nr), "%s through %s", name, foreign.Name)
		}
	}
	clone, _ := number(native, "clone")
	assert.Equal(t, seccomp.ActionAllow, action(native, clone, unix.CLONE_VM|unix.CLONE_THREAD|unix.CLONE_SIGHAND), "a thread")
	assert.Equal(t, seccomp.ActionErrno, action(native, clone, unix.CLONE_NEWUSER), "a user namespace")
	if native.ID == arch.X86_64.ID {
		unshare, _ := number(native, "unshare")
		getpid, _ := number(native, "getpid")
		for _, nr := range []uint32{unshare, getpid} {
			assert.Equal(t, seccomp.ActionErrno, action(native, nr|uint32(arch.X32.SeccompMask)), "x32 call %d", nr)
		}
	}
}
