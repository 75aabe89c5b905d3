package tensor

import (
	"runtime"
	"syscall"
	"time"
)

// threadCPUTime returns the CPU time the calling OS thread has used, so a
// one-thread benchmark can be timed without the time other processes on a
// shared machine take from it. ok is false where that is unavailable.
func threadCPUTime() (d time.Duration, ok bool) {
	var ru syscall.Rusage
	const rusageThread = 1 // RUSAGE_THREAD
	if err := syscall.Getrusage(rusageThread, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}

// lockThread pins the goroutine to its OS thread for threadCPUTime.
func lockThread() (unlock func()) {
	runtime.LockOSThread()
	return runtime.UnlockOSThread
}
