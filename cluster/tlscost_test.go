package cluster

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"github.com/moetrain/moetrain/cluster/pki"
)

// linkPair is a loopback TCP connection's two ends, each wrapped in TLS
// 1.3 (mutual, the job's certificates, as the control plane) when secure.
func linkPair(tb testing.TB, secure bool) (a, b net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	b = <-accepted
	if b == nil {
		tb.Fatal("accept failed")
	}
	tb.Cleanup(func() { a.Close(); b.Close() })
	if !secure {
		return a, b
	}
	j, err := pki.WriteJob(filepath.Join(tb.TempDir(), "tls"), "bench", []string{"127.0.0.1"}, 1)
	if err != nil {
		tb.Fatal(err)
	}
	scfg, serr := j.Coordinator.ServerConfig()
	ccfg, cerr := j.Workers[0].ClientConfig()
	if err := errors.Join(serr, cerr); err != nil {
		tb.Fatal(err)
	}
	ccfg.ServerName = "127.0.0.1"
	ta, tb2 := tls.Client(a, ccfg), tls.Server(b, scfg)
	errs := make(chan error, 1)
	go func() { errs <- tb2.Handshake() }()
	if err := ta.Handshake(); err != nil {
		tb.Fatal(err)
	}
	if err := <-errs; err != nil {
		tb.Fatal(err)
	}
	return ta, tb2
}

// exchange sends size bytes each way at once over a and b: the bytes that
// cross each link direction in a ring all-reduce of size bytes over two
// ranks (reduce-scatter, then all-gather, of size/2 each).
func exchange(a, b net.Conn, abuf, bbuf, ain, bin []byte) error {
	var wg sync.WaitGroup
	errs := make([]error, 4)
	run := func(i int, f func() error) {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = f() }()
	}
	run(0, func() error { _, err := a.Write(abuf); return err })
	run(1, func() error { _, err := b.Write(bbuf); return err })
	run(2, func() error { _, err := io.ReadFull(a, ain); return err })
	run(3, func() error { _, err := io.ReadFull(b, bin); return err })
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// The bytes arrive intact both ways over either link (the benchmark's
// exchange moves what it claims to).
func TestLinkExchange(t *testing.T) {
	for _, secure := range []bool{false, true} {
		a, b := linkPair(t, secure)
		abuf, bbuf := make([]byte, 1<<20+3), make([]byte, 1<<20+3)
		for i := range abuf {
			abuf[i], bbuf[i] = byte(i*7), byte(i*13+1)
		}
		ain, bin := make([]byte, len(bbuf)), make([]byte, len(abuf))
		if err := exchange(a, b, abuf, bbuf, ain, bin); err != nil {
			t.Fatal(err)
		}
		if string(ain) != string(bbuf) || string(bin) != string(abuf) {
			t.Fatalf("secure=%v: bytes changed in transit", secure)
		}
	}
}

// BenchmarkDataPlaneLink is what TLS on the data plane would cost per
// link: a full-duplex exchange of an all-reduce's bytes at np = 2 over
// loopback, cleartext against TLS 1.3 (docs/decisions.md#tls-on-the-control-plane-only).
// b.SetBytes counts one direction.
func BenchmarkDataPlaneLink(b *testing.B) {
	for _, size := range []int{1 << 20, 16 << 20} {
		for _, secure := range []bool{false, true} {
			name := "tcp"
			if secure {
				name = "tls"
			}
			b.Run(fmt.Sprintf("%s/%dMiB", name, size>>20), func(b *testing.B) {
				x, y := linkPair(b, secure)
				xb, yb, xin, yin := make([]byte, size), make([]byte, size), make([]byte, size), make([]byte, size)
				b.SetBytes(int64(size))
				b.ResetTimer()
				for range b.N {
					if err := exchange(x, y, xb, yb, xin, yin); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
