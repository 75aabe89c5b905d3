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
// the network poller wait, for at most spin. want is asked between polls:
// polling stops as soon as it turns false (nobody waits for this
// connection's data any more; the owner also turns it false before closing
// the connection, since Close waits for a Read in progress).
type spinReader struct {
	conn *net.TCPConn
	spin time.Duration
	want func() bool
}

func newSpinReader(c *net.TCPConn, spin time.Duration, want func() bool) io.Reader {
	if spin <= 0 {
		return c
	}
	return &spinReader{conn: c, spin: spin, want: want}
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

// pollReady returns when the connection to peer has data to read, done is
// closed, spin has passed, or a connection with a write in progress has
// room (or any polled connection fails), whichever is first. Between polls
// it lets the other goroutines of this process run and yields the CPU to
// other processes.
func pollReady(t *tcpTransport, peer int, done <-chan struct{}) {
	fds := make([]unix.PollFd, 0, len(t.peers))
	start := time.Now()
	for {
		select {
		case <-done:
			return
		default:
		}
		fds = fds[:0]
		for q, pc := range t.peers {
			if pc == nil {
				continue
			}
			ev := int16(0)
			if q == peer {
				ev |= unix.POLLIN
			}
			if pc.writing.Load() > 0 {
				ev |= unix.POLLOUT
			}
			if ev == 0 {
				continue
			}
			if pc.fd < 0 {
				return
			}
			fds = append(fds, unix.PollFd{Fd: pc.fd, Events: ev})
		}
		n, err := unix.Poll(fds, 0)
		if (err != nil && err != unix.EINTR) || n > 0 || time.Since(start) > t.spin {
			return
		}
		runtime.Gosched()
		_, _, _ = unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
	}
}

// rawFD is c's descriptor number, or -1.
func rawFD(c *net.TCPConn) int32 {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1
	}
	fd := int32(-1)
	if rc.Control(func(f uintptr) { fd = int32(f) }) != nil {
		return -1
	}
	return fd
}
