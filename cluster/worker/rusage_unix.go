//go:build unix

package worker

import (
	"runtime"
	"syscall"
)

// peakRSSBytes is the process's peak resident set size (0 if unknown).
func peakRSSBytes() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	if runtime.GOOS == "darwin" {
		return int64(ru.Maxrss) // bytes on Darwin
	}
	return int64(ru.Maxrss) * 1024 // KiB elsewhere
}
