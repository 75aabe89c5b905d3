package collective

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// tcpMesh builds an n-rank mesh over loopback inside this process, rank i
// presenting tokens[i].
func tcpMesh(t *testing.T, n int, tokens []string) ([]Transport, []error) {
	t.Helper()
	return dialTestMesh(t, n, 2*time.Second, func(rank int, addrs []string) TCPConfig {
		return TCPConfig{Rank: rank, Addrs: addrs, Token: tokens[rank]}
	})
}

// listenLoopback opens n data-plane listeners on loopback ports, closed when
// the test ends, and returns them with their addresses.
func listenLoopback(tb testing.TB, n int) ([]net.Listener, []string) {
	tb.Helper()
	return listenLoopbackCC(tb, n, "")
}

// listenLoopbackCC is listenLoopback whose listeners ask for the congestion
// control congestion (ListenCongestion).
func listenLoopbackCC(tb testing.TB, n int, congestion string) ([]net.Listener, []string) {
	tb.Helper()
	lns := make([]net.Listener, n)
	addrs := make([]string, n)
	for i := range n {
		ln, err := ListenCongestion("127.0.0.1:0", congestion)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { ln.Close() })
		lns[i], addrs[i] = ln, ln.Addr().String()
	}
	return lns, addrs
}

// dialTestMesh listens on n loopback ports and dials the mesh with each
// rank's config from cfg, returning every rank's transport and error.
func dialTestMesh(t testing.TB, n int, timeout time.Duration, cfg func(rank int, addrs []string) TCPConfig) ([]Transport, []error) {
	t.Helper()
	lns, addrs := listenLoopback(t, n)
	return dialMeshOn(t, lns, addrs, timeout, cfg)
}

// dialMeshOn dials the mesh of the listeners lns (at addrs), every rank at
// once with its config from cfg, and returns every rank's transport and error.
func dialMeshOn(t testing.TB, lns []net.Listener, addrs []string, timeout time.Duration, cfg func(rank int, addrs []string) TCPConfig) ([]Transport, []error) {
	t.Helper()
	n := len(lns)
	ts := make([]Transport, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	ctx := testCtx(t, timeout)
	for i := range n {
		wg.Go(func() {
			ts[i], errs[i] = DialMesh(ctx, lns[i], cfg(i, addrs))
		})
	}
	wg.Wait()
	return ts, errs
}

func sameTokens(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = "job-secret"
	}
	return out
}

func TestTCPCollectives(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4} {
		ts, errs := tcpMesh(t, n, sameTokens(n))
		mustAll(t, errs)
		comms := worlds(ts, Config{SegmentBytes: 64 << 10})
		ctx := testCtx(t, 10*time.Second)
		for _, size := range []int{0, 1, 7, 101, 4099, 1<<18 + 3} {
			mustAll(t, runRanks(comms, func(c *Comm) error {
				if err := checkAllReduce(ctx, c, size); err != nil {
					return err
				}
				// All-to-all of the same buffer sizes, rounded to blocks.
				m := size / max(n, 1)
				send := make([]float32, n*m)
				for i := range send {
					send[i] = float32(c.Rank()*1000000 + i)
				}
				recv := make([]float32, n*m)
				if err := c.AllToAll(ctx, send, recv); err != nil {
					return err
				}
				for j := range n {
					for i := range m {
						if w := float32(j*1000000 + c.Rank()*m + i); recv[j*m+i] != w {
							return fmt.Errorf("alltoall from %d element %d = %v, want %v", j, i, recv[j*m+i], w)
						}
					}
				}
				return nil
			}))
		}
		closeAllT(ts)
	}
}

func TestTCPWrongTokenRefused(t *testing.T) {
	ts, errs := tcpMesh(t, 3, []string{"good", "good", "evil"})
	for _, tr := range ts {
		if tr != nil {
			tr.Close()
		}
	}
	if !errors.Is(errs[2], ErrRefused) {
		t.Fatalf("rank 2 (wrong token): want ErrRefused, got %v", errs[2])
	}
	for _, r := range []int{0, 1} {
		if errs[r] == nil {
			t.Fatalf("rank %d built a mesh with a stranger", r)
		}
		if !strings.Contains(errs[r].Error(), "ranks [2]") {
			t.Errorf("rank %d: error does not name the missing rank 2: %v", r, errs[r])
		}
	}
	if !strings.Contains(errs[0].Error()+errs[1].Error(), "refused") {
		t.Errorf("no rank reports the refused connection: %v / %v", errs[0], errs[1])
	}
}

// A stranger speaking garbage on the data-plane port is refused without
// breaking the mesh.
func TestTCPStrangerIgnored(t *testing.T) {
	ln0, _ := Listen("127.0.0.1:0")
	ln1, _ := Listen("127.0.0.1:0")
	defer ln0.Close()
	defer ln1.Close()
	addrs := []string{ln0.Addr().String(), ln1.Addr().String()}
	c, err := net.Dial("tcp", addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	c.Write(bytes.Repeat([]byte("GET / HTTP/1.1\r\n"), 4))
	defer c.Close()
	ctx := testCtx(t, 3*time.Second)
	var t0, t1 Transport
	var e0, e1 error
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); t0, e0 = DialMesh(ctx, ln0, TCPConfig{Rank: 0, Addrs: addrs, Token: "x"}) }()
	go func() { defer wg.Done(); t1, e1 = DialMesh(ctx, ln1, TCPConfig{Rank: 1, Addrs: addrs, Token: "x"}) }()
	wg.Wait()
	if e0 != nil || e1 != nil {
		t.Fatalf("mesh failed: %v / %v", e0, e1)
	}
	t0.Close()
	t1.Close()
}

func TestTCPDeadPeer(t *testing.T) {
	ts, errs := tcpMesh(t, 3, sameTokens(3))
	mustAll(t, errs)
	defer closeAllT(ts)
	comms := worlds(ts, Config{})
	ctx := testCtx(t, 5*time.Second)
	ts[1].Close() // as if the process died: its sockets close
	for _, r := range []int{0, 2} {
		err := comms[r].AllReduce(ctx, make([]float32, 1000), Sum)
		if err == nil || !strings.Contains(err.Error(), "rank 1") {
			t.Errorf("rank %d: want an error naming rank 1, got %v", r, err)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("rank %d: waited for the deadline: %v", r, err)
		}
	}
}

func TestDialMeshValidation(t *testing.T) {
	ctx := context.Background()
	for _, cfg := range []TCPConfig{
		{Rank: 0, Token: "t"},
		{Rank: 2, Addrs: []string{"a", "b"}, Token: "t"},
		{Rank: 0, Addrs: []string{"a"}},
		{Rank: 0, Addrs: []string{"a"}, Token: "t", SpinWait: time.Millisecond},
		{Rank: 0, Addrs: []string{"a"}, Token: "t", SpinYield: true},
	} {
		if _, err := DialMesh(ctx, nil, cfg); err == nil {
			t.Errorf("DialMesh(%+v) accepted", cfg)
		}
	}
	if runtime.GOOS != "linux" {
		return // the engine is Linux only
	}
	// A world of one needs no peers: the engine options are accepted with
	// the engine, refused without it.
	ok := TCPConfig{Rank: 0, Addrs: []string{"a"}, Token: "t", SpinWait: time.Millisecond, SpinYield: true, ProgressEngine: true}
	tr, err := DialMesh(ctx, nil, ok)
	if err != nil {
		t.Fatalf("DialMesh(%+v): %v", ok, err)
	}
	tr.Close()
	ok.ProgressEngine = false
	if _, err := DialMesh(ctx, nil, ok); err == nil || !strings.Contains(err.Error(), "progress engine only") {
		t.Errorf("SpinWait without the engine: error %v, want one naming the progress engine", err)
	}
}

// A rank whose address list points at the wrong process refuses it.
func TestTCPUnexpectedRankRefused(t *testing.T) {
	const n = 3
	ts, errs := dialTestMesh(t, n, time.Second, func(rank int, addrs []string) TCPConfig {
		if rank == 2 {
			addrs = []string{addrs[1], addrs[0], addrs[2]}
		}
		return TCPConfig{Rank: rank, Addrs: addrs, Token: "k"}
	})
	for _, tr := range ts {
		if tr != nil {
			tr.Close()
		}
	}
	if !errors.Is(errs[2], ErrRefused) || !strings.Contains(errs[2].Error(), "expected rank") {
		t.Fatalf("rank 2: want a refusal naming the unexpected rank, got %v", errs[2])
	}
}

// checkNoWaiters verifies that after every operation completed no receive
// is still posted on any TCP transport of ts.
func checkNoWaiters(t *testing.T, ts []Transport) {
	t.Helper()
	for r, tr := range ts {
		tt, ok := tr.(*tcpTransport)
		if !ok {
			continue
		}
		tt.in.mu.Lock()
		if len(tt.in.waiting) != 0 {
			t.Errorf("rank %d: %d receives still posted", r, len(tt.in.waiting))
		}
		for p, ws := range tt.in.byPeer {
			if len(ws) != 0 {
				t.Errorf("rank %d: %d receives from rank %d still listed by peer", r, len(ws), p)
			}
		}
		tt.in.mu.Unlock()
	}
}

// collectivesRound checks an all-reduce, an all-to-all-v with zero splits and a
// ring exchange of about size elements on c.
func collectivesRound(ctx context.Context, c *Comm, size int) error {
	n, r := c.Size(), c.Rank()
	if err := checkAllReduce(ctx, c, size); err != nil {
		return err
	}
	// Rank q sends (q+j)%3 == 0 ? 0 : size/n+j elements to rank j.
	count := func(from, to int) int {
		if (from+to)%3 == 0 {
			return 0
		}
		return size/max(n, 1) + to
	}
	sc, rc := make([]int, n), make([]int, n)
	ns, nr := 0, 0
	for j := range n {
		sc[j], rc[j] = count(r, j), count(j, r)
		ns += sc[j]
		nr += rc[j]
	}
	send, recv := make([]float32, ns), make([]float32, nr)
	off := 0
	for j := range n {
		for i := range sc[j] {
			send[off+i] = float32(r*100000 + j*1000 + i%1000)
		}
		off += sc[j]
	}
	if err := c.AllToAllV(ctx, send, sc, recv, rc); err != nil {
		return err
	}
	off = 0
	for j := range n {
		for i := range rc[j] {
			if w := float32(j*100000 + r*1000 + i%1000); recv[off+i] != w {
				return fmt.Errorf("alltoallv n=%d size=%d: from %d element %d = %v, want %v", n, size, j, i, recv[off+i], w)
			}
		}
		off += rc[j]
	}
	toNext, toPrev := make([]float32, size), make([]float32, size)
	fromPrev, fromNext := make([]float32, size), make([]float32, size)
	for i := range size {
		toNext[i], toPrev[i] = float32(r*10+1), float32(r*10+2)
	}
	if err := c.RingExchange(ctx, toNext, toPrev, fromPrev, fromNext); err != nil {
		return err
	}
	prev, next := mod(r-1, n), mod(r+1, n)
	for i := range size {
		if fromPrev[i] != float32(prev*10+1) || fromNext[i] != float32(next*10+2) {
			return fmt.Errorf("ring exchange n=%d size=%d: element %d got %v/%v", n, size, i, fromPrev[i], fromNext[i])
		}
	}
	return nil
}

// loopbackPair returns the two ends of a loopback TCP connection, closed
// when the test ends. The kernel completes the handshake into the listen
// backlog, so the dial returns before the accept is called.
func loopbackPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if a, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if b, err = ln.AcceptTCP(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return a, b
}

// deadPeerMidOperation starts an all-reduce of size elements on ranks 0 and
// 2 of the 3 transports ts, closes rank 1 (as if it died) while they wait
// for it, and checks that both fail naming rank 1, before the deadline.
func deadPeerMidOperation(t *testing.T, ts []Transport, size int) {
	comms := worlds(ts, Config{})
	ctx := testCtx(t, 5*time.Second)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for _, r := range []int{0, 2} {
		wg.Go(func() {
			// Rank 1 never joins: the survivors poll for its frames.
			errs[r] = comms[r].AllReduce(ctx, make([]float32, size), Sum)
		})
	}
	time.Sleep(20 * time.Millisecond)
	ts[1].Close()
	wg.Wait()
	for _, r := range []int{0, 2} {
		err := errs[r]
		if err == nil || !strings.Contains(err.Error(), "rank 1") {
			t.Errorf("rank %d: want an error naming rank 1, got %v", r, err)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("rank %d: waited for the deadline: %v", r, err)
		}
	}
}

// A write that fails because the reader already closed the link (it read a
// bad frame) reports the reader's cause, not the closed socket: the job's
// error must name what the peer did.
func TestTCPLinkDownKeepsFirstCause(t *testing.T) {
	ts, errs := tcpMesh(t, 2, sameTokens(2))
	mustAll(t, errs)
	defer closeAllT(ts)
	tt := ts[0].(*tcpTransport)
	bad := errors.New("frame length 4294967295 exceeds the limit")
	if got := tt.linkDown(1, bad); got != bad {
		t.Fatalf("first linkDown returned %v, want %v", got, bad)
	}
	if got := tt.linkDown(1, errors.New("write: use of closed network connection")); got != bad {
		t.Fatalf("a later write failure reported %v, want the first cause %v", got, bad)
	}
	err := ts[0].Send(testCtx(t, time.Second), 1, Header{Op: OpSendRecv, Count: 1}, []byte{1, 2, 3, 4})
	if err == nil || !strings.Contains(err.Error(), "4294967295") {
		t.Fatalf("send after the link went down: want the first cause, got %v", err)
	}
}
