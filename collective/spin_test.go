package collective

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// tcpMeshSpin builds an n-rank loopback mesh that polls for spin: its
// readers, or with yield its waiters (TCPConfig.SpinYield).
func tcpMeshSpin(t *testing.T, n int, spin time.Duration, yield bool) []Transport {
	t.Helper()
	ts, errs := dialTestMesh(t, n, 5*time.Second, func(rank int, addrs []string) TCPConfig {
		return TCPConfig{Rank: rank, Addrs: addrs, Token: "spin", SpinWait: spin, SpinYield: yield}
	})
	mustAll(t, errs)
	t.Cleanup(func() { closeAllT(ts) })
	return ts
}

// checkNoWaiters verifies that the lock-free waiter counts agree with the
// inbox's map: after every operation completed, nobody waits.
func checkNoWaiters(t *testing.T, ts []Transport) {
	t.Helper()
	for r, tr := range ts {
		tt, ok := tr.(*tcpTransport)
		if !ok {
			continue
		}
		tt.in.mu.Lock()
		for p := range tt.in.blocked {
			if got := tt.in.blocked[p].Load(); got != 0 {
				t.Errorf("rank %d: %d goroutines still counted as blocked on rank %d", r, got, p)
			}
		}
		if len(tt.in.waiting) != 0 {
			t.Errorf("rank %d: %d receives still posted", r, len(tt.in.waiting))
		}
		tt.in.mu.Unlock()
	}
}

// TestTCPSpinCollectives runs the collectives over connections whose readers
// poll (the path TCPConfig.SpinWait turns on) and checks exact results.
func TestTCPSpinCollectives(t *testing.T) {
	sizes := []int{0, 1, 7, 101, 4099, 1<<18 + 3}
	for _, yield := range []bool{false, true} {
		for _, n := range []int{1, 2, 3, 5, 8} {
			t.Run(fmt.Sprintf("yield=%v/n=%d", yield, n), func(t *testing.T) {
				ts := tcpMeshSpin(t, n, 50*time.Microsecond, yield)
				for cfgName, cfg := range testCfgs {
					comms := worlds(ts, cfg)
					ctx := testCtx(t, 20*time.Second)
					for _, size := range sizes {
						if n == 8 && size > 4099 && cfgName != "default" {
							continue // keep the test short: the big size once per world
						}
						mustAll(t, runRanks(comms, func(c *Comm) error {
							return spinRound(ctx, c, size)
						}))
					}
				}
				checkNoWaiters(t, ts)
			})
		}
	}
}

// spinRound checks an all-reduce, an all-to-all-v with zero splits and a
// ring exchange of about size elements on c.
func spinRound(ctx context.Context, c *Comm, size int) error {
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

// loopbackPair returns the two ends of a loopback TCP connection.
func loopbackPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-acc
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// TestSpinReaderStream: whatever the polling decision, the reader returns the
// stream's bytes in order and then EOF.
func TestSpinReaderStream(t *testing.T) {
	for _, want := range []bool{true, false} {
		t.Run(fmt.Sprintf("want=%v", want), func(t *testing.T) {
			a, b := loopbackPair(t)
			rng := rand.New(rand.NewPCG(1, 2))
			data := make([]byte, 1<<20+3)
			for i := range data {
				data[i] = byte(rng.IntN(256))
			}
			go func() {
				// Bursts with pauses longer and shorter than the poll.
				for off := 0; off < len(data); {
					k := min(len(data)-off, 1+rng.IntN(70000))
					if _, err := a.Write(data[off : off+k]); err != nil {
						return
					}
					off += k
					time.Sleep(time.Duration(rng.IntN(200)) * time.Microsecond)
				}
				a.Close()
			}()
			r := newSpinReader(b, 100*time.Microsecond, func() bool { return want })
			got, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("read %d bytes, want %d (or contents differ)", len(got), len(data))
			}
		})
	}
}

// TestSpinReaderClose: a Read that polls stops polling once want turns
// false (the transport turns it false before closing a link: Close waits for
// a Read in progress), then fails with the close.
func TestSpinReaderClose(t *testing.T) {
	_, b := loopbackPair(t)
	var closing atomic.Bool
	r := newSpinReader(b, time.Minute, func() bool { return !closing.Load() })
	done := make(chan error, 1)
	go func() {
		var p [16]byte
		_, err := r.Read(p[:])
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	closing.Store(true)
	b.Close()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, io.EOF) {
			t.Fatalf("read after close: %v, want a closed-connection error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read did not return after the connection was closed")
	}
}

// TestTCPSpinDeadPeer: with polling readers, a peer that dies mid-operation
// still fails the survivors with an error naming it, before the deadline,
// and Close returns although readers may be polling.
func TestTCPSpinDeadPeer(t *testing.T) {
	for _, yield := range []bool{false, true} {
		// 1000 elements travel in 4 KiB frames (polled by waiters with
		// yield), 2^18+3 in ring segments of about 340 KiB.
		for _, size := range []int{1000, 1<<18 + 3} {
			t.Run(fmt.Sprintf("yield=%v/size=%d", yield, size), func(t *testing.T) { testTCPSpinDeadPeer(t, yield, size) })
		}
	}
}

func testTCPSpinDeadPeer(t *testing.T, yield bool, size int) {
	deadPeerMidOperation(t, tcpMeshSpin(t, 3, 50*time.Millisecond, yield), size)
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
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Rank 1 never joins: the survivors poll for its frames.
			errs[r] = comms[r].AllReduce(ctx, make([]float32, size), Sum)
		}()
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
