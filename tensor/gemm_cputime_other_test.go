//go:build !linux

package tensor

import "time"

func threadCPUTime() (time.Duration, bool) { return 0, false }

func lockThread() (unlock func()) { return func() {} }
