//go:build linux

package worker

import (
	"context"
	"net"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The worker's --tcp-congestion reaches the data plane's listener (the
// connections it accepts inherit it; collective's tests check those), and a
// name the kernel refuses is a flag error before anything starts.
func TestDataPlaneCongestion(t *testing.T) {
	dp, err := NewTCPDataPlaneCongestion("127.0.0.1", "reno")
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	rc, err := dp.(*tcpDataPlane).ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var name string
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		name, gerr = unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION)
	}); err != nil || gerr != nil {
		t.Fatal(err, gerr)
	}
	if name = strings.TrimRight(name, "\x00"); name != "reno" {
		t.Fatalf("data plane listener congestion control %q, want reno", name)
	}

	err = RunWorkerProcess(context.Background(), WorkerOptions{Join: "127.0.0.1:1", Token: "t", TCPCongestion: "nosuch-cc"})
	if err == nil || !strings.Contains(err.Error(), "--tcp-congestion") || !strings.Contains(err.Error(), "nosuch-cc") {
		t.Fatalf("worker with an unknown congestion control: err = %v, want a --tcp-congestion error naming it", err)
	}
}
