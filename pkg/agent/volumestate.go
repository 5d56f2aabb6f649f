package agent

// A destination volume's own state around a sync: flushed at its end, and,
// for a failed one, whether the volume itself was the cause (full, or its
// disk gone), in words that tell the user what happened.

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	"github.com/ferrysync/ferry/pkg/bytesize"
	"github.com/ferrysync/ferry/pkg/mount"
)

// noSpace says that a destination's volume ran out of space: which claim,
// how large its filesystem is and how much the source's volume uses (what
// the source said), so that the user knows what capacity to give it.
func noSpace(ma *agentv1alpha1.MountAssignment, path string, needed int64) string {
	size := "of unknown size"
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err == nil {
		size = "of " + bytesize.Format(int64(st.Blocks)*st.Bsize)
	}
	return noSpaceMessage(ma.Spec.Owner.Namespace+"/"+ma.Spec.Volume.Claim, size, needed)
}

// volumeLost says, for a failed sync, whether the destination's volume
// itself failed under it ("" if it still takes writes): its disk taken off
// the node (a detach by someone else) or failing. rsync then reports only
// its own operations' errors ("Read-only file system": ext4 refuses new
// work once its journal aborts on I/O errors, without marking itself
// read-only), so the agent writes and flushes one small file of its own at
// the volume's root, and removes it: only I/O and read-only errors count
// (a full volume has its own message).
func volumeLost(path string) string {
	mounted, err := mount.IsMountPoint(path)
	if err != nil || !mounted {
		return fmt.Sprintf("the destination volume is no longer mounted at %s", path)
	}
	f, err := os.CreateTemp(path, ".ferry-probe-")
	if err == nil {
		_, err = f.Write([]byte{0})
		if err == nil {
			err = f.Sync()
		}
		err = errors.Join(err, f.Close(), os.Remove(f.Name()))
	}
	if errors.Is(err, syscall.EIO) || errors.Is(err, syscall.EROFS) {
		return "the destination volume failed under the sync (" + err.Error() + "): its disk failed, or was detached from the node"
	}
	return ""
}

// syncfs flushes the volume's filesystem, so that a snapshot cut next holds
// everything the sync wrote.
func syncfs(path string) error {
	if path == "" {
		return errors.New("flush volume: not mounted")
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("flush volume %s: %w", path, err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("flush volume %s: %w", path, err)
	}
	return nil
}
