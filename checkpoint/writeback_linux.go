package checkpoint

import (
	"errors"
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

// openDirect creates (truncating) path for writing with O_DIRECT; direct is
// false when the file system refuses the flag, and the file is then opened
// for buffered writes.
func openDirect(path string) (f *os.File, direct bool, err error) {
	const flags = os.O_CREATE | os.O_TRUNC | os.O_WRONLY
	f, err = os.OpenFile(path, flags|unix.O_DIRECT, 0o644)
	if err == nil {
		return f, true, nil
	}
	if !isInvalid(err) {
		return nil, false, err
	}
	f, err = os.OpenFile(path, flags, 0o644)
	return f, false, err
}

// clearDirect switches f to buffered I/O.
func clearDirect(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		fl, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
		if err != nil {
			ferr = err
			return
		}
		_, ferr = unix.FcntlInt(fd, unix.F_SETFL, fl&^unix.O_DIRECT)
	}); err != nil {
		return err
	}
	return ferr
}

// isInvalid reports whether err is EINVAL, which open and write return where
// direct I/O is not supported or not aligned as the file system wants.
func isInvalid(err error) bool { return errors.Is(err, unix.EINVAL) }

// openReadDirect opens path for reading with O_DIRECT, or returns nil where
// the file system refuses it (or any other error: the caller reads through
// the page cache instead).
func openReadDirect(path string) *os.File {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil
	}
	return f
}
