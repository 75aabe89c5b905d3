//go:build !linux

package cluster

import (
	"syscall"
	"time"
)

// setUserTimeout is a no-op here: the keepalive probe count bounds a silent
// peer instead.
func setUserTimeout(syscall.RawConn, time.Duration) error { return nil }
