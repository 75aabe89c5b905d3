//go:build linux

package collective

import (
	"fmt"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// setCongestion gives the socket behind c the first TCP congestion control
// of choice (TCPConfig.Congestion's syntax) that the kernel accepts.
func setCongestion(c syscall.RawConn, choice string) error {
	names, err := congestionNames(choice)
	if err != nil || names == nil {
		return err
	}
	if cerr := c.Control(func(fd uintptr) { err = chooseCongestion(int(fd), choice, names) }); cerr != nil {
		return fmt.Errorf("TCP congestion control: %w", cerr)
	}
	return err
}

// CheckCongestion reports whether choice (TCPConfig.Congestion's syntax)
// names a congestion control this process may use, by trying it on a
// socket that is never connected: callers can refuse a bad flag before
// they start anything.
func CheckCongestion(choice string) error {
	names, err := congestionNames(choice)
	if err != nil || names == nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("TCP congestion control: probe socket: %w", err)
	}
	defer unix.Close(fd)
	return chooseCongestion(fd, choice, names)
}

// chooseCongestion sets the first of names that the kernel accepts on fd.
func chooseCongestion(fd int, choice string, names []string) error {
	var errs []string
	for _, name := range names {
		err := unix.SetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION, name)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Sprintf("%s: %v", name, err))
	}
	return fmt.Errorf("TCP congestion control %q: none accepted (%s; see /proc/sys/net/ipv4/tcp_allowed_congestion_control)",
		choice, strings.Join(errs, "; "))
}

// congestionOf reports the congestion control of the socket behind c.
func congestionOf(c syscall.RawConn) (string, error) {
	var name string
	var err error
	if cerr := c.Control(func(fd uintptr) {
		name, err = unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION)
	}); cerr != nil {
		return "", cerr
	}
	return strings.TrimRight(name, "\x00"), err
}
