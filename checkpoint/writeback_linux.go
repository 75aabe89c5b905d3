package checkpoint

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to start writing the byte range [off,
// off+n) of f to the device now, without waiting for it. It is a hint: a
// shard write otherwise leaves all its pages dirty until the final fsync,
// which then waits for the whole file, so the page-cache copy and the device
// write run one after the other. Started early, the device writes while the
// writer is still copying and the fsync waits only for the tail. Durability
// still rests on that fsync alone, which also reports any write error, so an
// error here is ignored.
func startWriteback(f *os.File, off, n int64) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SyncFileRange(int(fd), off, n, unix.SYNC_FILE_RANGE_WRITE)
	})
}
