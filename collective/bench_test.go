package collective

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
)

// benchRanks times op on every rank of comms; b.N operations per rank.
func benchRanks(b *testing.B, comms []*Comm, bytes int, op func(ctx context.Context, c *Comm, buf []float32) error) {
	ctx := context.Background()
	bufs := make([][]float32, len(comms))
	for i := range bufs {
		bufs[i] = make([]float32, bytes/4)
	}
	b.SetBytes(int64(bytes))
	b.ResetTimer()
	var wg sync.WaitGroup
	errs := make([]error, len(comms))
	for i, c := range comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range b.N {
				if err := op(ctx, c, bufs[i]); err != nil {
					errs[i] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
}

func allReduceOp(ctx context.Context, c *Comm, buf []float32) error {
	return c.AllReduce(ctx, buf, Sum)
}

func BenchmarkAllReduceInProc(b *testing.B) {
	for _, n := range []int{2, 4} {
		for _, size := range []int{4 << 10, 64 << 10, 1 << 20, 16 << 20} {
			b.Run(fmt.Sprintf("n%d/%dK", n, size>>10), func(b *testing.B) {
				ts := NewInProcess(n)
				defer closeAllT(ts)
				benchRanks(b, worlds(ts, Config{}), size, allReduceOp)
			})
		}
	}
}

func benchTCP(b *testing.B, n int) []Transport {
	lns := make([]net.Listener, n)
	addrs := make([]string, n)
	for i := range n {
		ln, err := Listen("127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		lns[i], addrs[i] = ln, ln.Addr().String()
	}
	ts := make([]Transport, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ts[i], errs[i] = DialMesh(context.Background(), lns[i], TCPConfig{Rank: i, Addrs: addrs, Token: "b"})
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	return ts
}

// Ranks share one process here; `coordinator bench collectives` runs one
// process per rank, which is what the figures in the report come from.
func BenchmarkAllReduceTCP(b *testing.B) {
	for _, n := range []int{2, 4} {
		for _, size := range []int{4 << 10, 64 << 10, 1 << 20, 16 << 20} {
			b.Run(fmt.Sprintf("n%d/%dK", n, size>>10), func(b *testing.B) {
				ts := benchTCP(b, n)
				defer closeAllT(ts)
				benchRanks(b, worlds(ts, Config{}), size, allReduceOp)
			})
		}
	}
}

func BenchmarkAddTo(b *testing.B) {
	for _, n := range []int{1 << 10, 1 << 16, 1 << 20} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			x, y := make([]float32, n), make([]float32, n)
			b.SetBytes(int64(n * 4))
			for range b.N {
				addTo(x, x, y)
			}
		})
	}
}

func BenchmarkAllToAllTCP(b *testing.B) {
	for _, n := range []int{2, 4} {
		for _, size := range []int{4 << 10, 64 << 10, 1 << 20} {
			b.Run(fmt.Sprintf("n%d/%dK", n, size>>10), func(b *testing.B) {
				ts := benchTCP(b, n)
				defer closeAllT(ts)
				recv := make([][]float32, n)
				for i := range recv {
					recv[i] = make([]float32, size/4)
				}
				benchRanks(b, worlds(ts, Config{}), size, func(ctx context.Context, c *Comm, buf []float32) error {
					return c.AllToAll(ctx, buf[:len(buf)/n*n], recv[c.Rank()][:len(buf)/n*n])
				})
			})
		}
	}
}
