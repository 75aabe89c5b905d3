//go:build !linux

package collective

import (
	"io"
	"net"
	"time"
)

// newSpinReader reads c directly: polling is implemented on Linux only.
func newSpinReader(c *net.TCPConn, _ time.Duration, _ func() bool) io.Reader { return c }

// pollReady returns at once off Linux: waiters block without polling.
func pollReady(*tcpTransport, int, <-chan struct{}) {}

// rawFD is unknown off Linux (nothing polls descriptors there).
func rawFD(*net.TCPConn) int32 { return -1 }
