package collective

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
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

// dialTestMesh listens on n loopback ports and dials the mesh with each
// rank's config from cfg, returning every rank's transport and error.
func dialTestMesh(t *testing.T, n int, timeout time.Duration, cfg func(rank int, addrs []string) TCPConfig) ([]Transport, []error) {
	t.Helper()
	lns := make([]net.Listener, n)
	addrs := make([]string, n)
	for i := range n {
		ln, err := Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		lns[i] = ln
		addrs[i] = ln.Addr().String()
	}
	ts := make([]Transport, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	ctx := testCtx(t, timeout)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ts[i], errs[i] = DialMesh(ctx, lns[i], cfg(i, addrs))
		}()
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
	} {
		if _, err := DialMesh(ctx, nil, cfg); err == nil {
			t.Errorf("DialMesh(%+v) accepted", cfg)
		}
	}
}

// A rank whose address list points at the wrong process refuses it.
func TestTCPUnexpectedRankRefused(t *testing.T) {
	const n = 3
	lns := make([]net.Listener, n)
	addrs := make([]string, n)
	for i := range n {
		ln, err := Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		lns[i], addrs[i] = ln, ln.Addr().String()
	}
	swapped := []string{addrs[1], addrs[0], addrs[2]}
	ctx := testCtx(t, time.Second)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := addrs
			if i == 2 {
				a = swapped
			}
			tr, err := DialMesh(ctx, lns[i], TCPConfig{Rank: i, Addrs: a, Token: "k"})
			if tr != nil {
				tr.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	if !errors.Is(errs[2], ErrRefused) || !strings.Contains(errs[2].Error(), "expected rank") {
		t.Fatalf("rank 2: want a refusal naming the unexpected rank, got %v", errs[2])
	}
}
