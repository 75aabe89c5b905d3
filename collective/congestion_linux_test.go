//go:build linux

package collective

import (
	"os"
	"strings"
	"testing"
	"time"
)

// congestionMesh builds a 3-rank mesh whose listeners and dialers all ask
// for choice, and returns each connection's congestion control as the
// kernel reports it (getsockopt), both dialed and accepted ends.
func congestionMesh(t *testing.T, choice string) []string {
	t.Helper()
	lns, addrs := listenLoopbackCC(t, 3, choice)
	ts, errs := dialMeshOn(t, lns, addrs, 5*time.Second, func(rank int, addrs []string) TCPConfig {
		return TCPConfig{Rank: rank, Addrs: addrs, Token: "cc", Congestion: choice}
	})
	for _, tr := range ts {
		if tr != nil {
			t.Cleanup(func() { tr.Close() })
		}
	}
	mustAll(t, errs)
	var got []string
	for _, tr := range ts {
		for _, pp := range tr.(*tcpTransport).peers {
			if pp == nil {
				continue
			}
			rc, err := pp.conn.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			name, err := congestionOf(rc)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, name)
		}
	}
	return got
}

func TestTCPCongestion(t *testing.T) {
	sysDefault, err := os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control")
	if err != nil {
		t.Skipf("no congestion sysctl: %v", err)
	}
	system := strings.TrimSpace(string(sysDefault))
	all := func(got []string, want func(string) bool) {
		t.Helper()
		if len(got) != 6 { // 3 pairs, both ends
			t.Fatalf("got %d connection ends, want 6", len(got))
		}
		for _, g := range got {
			if !want(g) {
				t.Fatalf("connection ends have congestion control %v", got)
			}
		}
	}

	// reno is always allowed, to unprivileged processes too.
	got := congestionMesh(t, "reno")
	all(got, func(s string) bool { return s == "reno" })

	// An unknown name first falls through to the next.
	got = congestionMesh(t, "nosuch-cc, reno")
	all(got, func(s string) bool { return s == "reno" })

	got = congestionMesh(t, CongestionSystem)
	all(got, func(s string) bool { return s == system })

	// The default is cubic where this process may choose it, else reno:
	// never the system's BBR.
	got = congestionMesh(t, "")
	all(got, func(s string) bool { return s == "cubic" || s == "reno" })

	// A list the kernel accepts nothing of fails at once, naming it: in
	// Listen, and in DialMesh's dial, which must not retry it.
	if _, err := ListenCongestion("127.0.0.1:0", "nosuch-cc"); err == nil || !strings.Contains(err.Error(), "nosuch-cc") {
		t.Fatalf("listen with an unknown congestion control: err = %v, want one naming it", err)
	}
	lns, addrs := listenLoopback(t, 2)
	start := time.Now()
	_, err = DialMesh(testCtx(t, 5*time.Second), lns[1], TCPConfig{Rank: 1, Addrs: addrs,
		Token: "cc", Congestion: "nosuch-cc"})
	if err == nil || !strings.Contains(err.Error(), "nosuch-cc") || !strings.Contains(err.Error(), "rank 0") {
		t.Fatalf("dial with an unknown congestion control: err = %v, want one naming it and the peer", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("dial with an unknown congestion control took %v to fail: it must not be retried", d)
	}
	for _, bad := range []string{"reno,,cubic", "a-name-longer-than-fifteen"} {
		if _, err := DialMesh(testCtx(t, time.Second), nil, TCPConfig{Rank: 0, Addrs: []string{"127.0.0.1:1"}, Token: "x", Congestion: bad}); err == nil || !strings.Contains(err.Error(), "bad name") {
			t.Fatalf("congestion %q: err = %v, want a bad-name error", bad, err)
		}
	}
}

func TestCheckCongestion(t *testing.T) {
	for _, ok := range []string{"", CongestionSystem, "reno", "nosuch-cc,reno"} {
		if err := CheckCongestion(ok); err != nil {
			t.Errorf("CheckCongestion(%q) = %v, want nil", ok, err)
		}
	}
	for bad, want := range map[string]string{"nosuch-cc": "nosuch-cc", "reno,,cubic": "bad name", "a-name-longer-than-fifteen": "bad name"} {
		if err := CheckCongestion(bad); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckCongestion(%q) = %v, want an error containing %q", bad, err, want)
		}
	}
}
