//go:build linux

package collective

import (
	"io"
	"net"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// spinReader reads a TCP connection like conn.Read, except that when no data
// is there and want reports that a receive is waiting on this connection, it
// polls the socket for up to spin before parking in the runtime's network
// poller. A parked reader is woken through epoll and the scheduler, which
// costs microseconds on an idle host and up to a scheduler slice on a busy
// one, when another process got the CPU meanwhile; a short poll catches the
// reply of a peer that is already sending. Between polls it yields the P
// (runtime.Gosched), so the goroutines of this process (the operation that
// consumes what was read, senders) keep running; only goroutines parked in
// the network poller wait, for at most spin. With yield it also gives the
// CPU to other processes between polls (sched_yield), for ranks that share
// cores. want is asked between polls: polling stops as soon as it turns
// false (nobody waits for this connection's data any more; the owner also
// turns it false before closing the connection, since Close waits for a
// Read in progress).
type spinReader struct {
	conn  *net.TCPConn
	spin  time.Duration
	yield bool
	want  func() bool
}

func newSpinReader(c *net.TCPConn, spin time.Duration, yield bool, want func() bool) io.Reader {
	if spin <= 0 {
		return c
	}
	return &spinReader{conn: c, spin: spin, yield: yield, want: want}
}

func (s *spinReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	rc, err := s.conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var rerr error
	polled := false
	err = rc.Read(func(fd uintptr) bool {
		var start time.Time
		for {
			n, rerr = unix.Read(int(fd), p)
			switch {
			case rerr == unix.EINTR:
				continue
			case rerr != unix.EAGAIN:
				return true
			}
			// Poll only once per Read: after a park the poller has
			// reported data, or the connection is closing.
			if polled {
				return false
			}
			if start.IsZero() {
				// Let the goroutine woken by the frame just read run first:
				// it may post the receive that the next frame is for.
				start = time.Now()
			} else if !s.want() || time.Since(start) > s.spin {
				polled = true
				return false
			}
			runtime.Gosched()
			if s.yield {
				_, _, _ = unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
			}
		}
	})
	if err != nil {
		return 0, err
	}
	if rerr != nil {
		return 0, rerr
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}
