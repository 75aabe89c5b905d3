//go:build linux

package cluster

import (
	"context"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Both ends of a control-plane connection have the kernel keepalive and
// TCP_USER_TIMEOUT, which find a dead host or a cut network whatever the
// load of the processes.
func TestControlPlaneKeepalive(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := keepAliveListener{raw}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			t.Error(err)
			close(accepted)
			return
		}
		accepted <- c
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dialed, err := dialControl(ctx, raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer dialed.Close()
	acc := <-accepted
	if acc == nil {
		return
	}
	defer acc.Close()
	for side, c := range map[string]net.Conn{"dialled": dialed, "accepted": acc} {
		rc, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var ka, idle, intvl, ut int
		var gerr error
		if err := rc.Control(func(fd uintptr) {
			get := func(level, opt int) int {
				v, e := unix.GetsockoptInt(int(fd), level, opt)
				if e != nil {
					gerr = e
				}
				return v
			}
			ka = get(unix.SOL_SOCKET, unix.SO_KEEPALIVE)
			idle = get(unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
			intvl = get(unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
			ut = get(unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
		}); err != nil || gerr != nil {
			t.Fatal(err, gerr)
		}
		if ka == 0 || idle != int(controlKeepIdle/time.Second) || intvl != int(controlKeepInterval/time.Second) ||
			ut != int(controlUserTimeout/time.Millisecond) {
			t.Errorf("%s connection: keepalive %d idle %d s interval %d s user timeout %d ms", side, ka, idle, intvl, ut)
		}
	}
}
