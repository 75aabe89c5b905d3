//go:build !linux

package checkpoint

import (
	"errors"
	"os"
)

// startWriteback is a no-op where sync_file_range does not exist: the final
// fsync writes the whole file (see writeback_linux.go).
func startWriteback(f *os.File, off, n int64) {}

// openDirect opens path for buffered writes: direct I/O is only used on
// Linux (writeback_linux.go).
func openDirect(path string) (*os.File, bool, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	return f, false, err
}

func clearDirect(f *os.File) error { return errors.New("direct I/O is not used on this platform") }

func isInvalid(err error) bool { return false }

// openReadDirect returns nil: reads go through the page cache.
func openReadDirect(path string) *os.File { return nil }
