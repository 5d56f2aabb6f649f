// Package stream moves rsync's byte stream between its pipes and ssh
// channels with as few system calls and ssh window adjustments as it can:
// the data path of every transfer runs through it on both ends.
package stream

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// bufSize is the copy buffer. x/crypto/ssh sends a window adjustment for
// every read from a channel and splits writes into 32 KiB packets, so reads
// of up to 256 KiB cut the adjustments eightfold against io.Copy's 32 KiB.
const bufSize = 256 << 10

// pipeSize is what Grow asks the kernel for (the default is 64 KiB).
const pipeSize = 1 << 20

// Copy copies src to dst until EOF with a large buffer. It deliberately
// bypasses io.ReaderFrom and io.WriterTo, whose generic fallbacks in *os.File
// use small buffers when the other end is not a file or socket.
func Copy(dst io.Writer, src io.Reader) (int64, error) {
	buf := make([]byte, bufSize)
	return io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf)
}

// Grow enlarges a pipe's kernel buffer so rsync and the copier switch less
// often. It is best effort: a file that is not a pipe, or a system limit
// below the size, leaves it as it was.
func Grow(f *os.File) {
	_, _ = unix.FcntlInt(f.Fd(), unix.F_SETPIPE_SZ, pipeSize)
}
