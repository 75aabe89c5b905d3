package collective

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
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
		wg.Go(func() {
			for range b.N {
				if err := op(ctx, c, bufs[i]); err != nil {
					errs[i] = err
					return
				}
			}
		})
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

// benchTCP builds an n-rank TCP mesh on loopback; engine selects the
// progress engine (spinning, as the bench command runs it) over reader
// goroutines.
func benchTCP(b *testing.B, n int, engine bool) []Transport {
	ts, errs := dialTestMesh(b, n, 30*time.Second, func(rank int, addrs []string) TCPConfig {
		return TCPConfig{Rank: rank, Addrs: addrs, Token: "b", ProgressEngine: engine, SpinWait: spinIf(engine)}
	})
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
	for _, mode := range []string{"readers", "engine"} {
		for _, n := range []int{2, 4} {
			for _, size := range []int{4 << 10, 64 << 10, 1 << 20, 16 << 20} {
				b.Run(fmt.Sprintf("%s/n%d/%dK", mode, n, size>>10), func(b *testing.B) {
					ts := benchTCP(b, n, mode == "engine")
					defer closeAllT(ts)
					benchRanks(b, worlds(ts, Config{}), size, allReduceOp)
				})
			}
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
	for _, mode := range []string{"readers", "engine"} {
		for _, n := range []int{2, 4} {
			for _, size := range []int{4 << 10, 64 << 10, 1 << 20} {
				b.Run(fmt.Sprintf("%s/n%d/%dK", mode, n, size>>10), func(b *testing.B) {
					ts := benchTCP(b, n, mode == "engine")
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
}

// spinIf is the engine's spin budget in benchmarks: the bench command's
// default when ranks do not outnumber cores.
func spinIf(engine bool) time.Duration {
	if engine {
		return 200 * time.Microsecond
	}
	return 0
}

// RunBench's correctness pass must find every operation exact on sizes that
// do and do not divide by the rank count, and every rank must agree.
func TestRunBenchExact(t *testing.T) {
	const n = 3
	ts := NewInProcess(n)
	defer closeAllT(ts)
	cfg := BenchConfig{Ops: BenchOps, Sizes: []int{4, 28, 4100}, Iters: 1, Reps: 2}
	res := make([][]BenchResult, n)
	comms := worlds(ts, Config{})
	mustAll(t, runRanks(comms, func(c *Comm) error {
		r, err := RunBench(testCtx(t, 20*time.Second), c, cfg)
		res[c.Rank()] = r
		return err
	}))
	if want := len(BenchOps) * len(cfg.Sizes); len(res[0]) != want {
		t.Fatalf("%d results, want %d", len(res[0]), want)
	}
	for _, r := range res[0] {
		if r.Wrong != 0 {
			t.Errorf("%s %d bytes: %d wrong elements", r.Op, r.Bytes, r.Wrong)
		}
		if r.Ranks != n || r.Repeat != 2 {
			t.Errorf("%s %d bytes: ranks %d repeat %d, want %d and 2", r.Op, r.Bytes, r.Ranks, r.Repeat, n)
		}
	}
	for q := 1; q < n; q++ {
		for i := range res[0] {
			if res[q][i] != res[0][i] {
				t.Errorf("rank %d row %d = %+v, rank 0 has %+v", q, i, res[q][i], res[0][i])
			}
		}
	}
	if _, err := RunBench(context.Background(), comms[0], BenchConfig{Ops: []string{"nope"}}); err == nil {
		t.Error("unknown operation accepted")
	}
}
