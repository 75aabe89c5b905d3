package collective

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// BenchOps lists the operations RunBench knows, in table order.
var BenchOps = []string{"allreduce", "reducescatter", "allgather", "broadcast", "alltoall"}

// BenchResult is one row of an nccl-tests style table. Bytes is the buffer
// size as nccl-tests counts it (all-reduce and broadcast: the buffer;
// all-gather: the gathered buffer; reduce-scatter: the input; all-to-all: the
// send buffer). Time is the median over repetitions of the slowest rank's
// mean time per operation.
type BenchResult struct {
	Op     string
	Bytes  int
	Count  int // float32 elements
	Time   time.Duration
	AlgBW  float64 // GB/s (1e9 bytes)
	BusBW  float64 // GB/s, algbw times the nccl-tests factor
	Wrong  int     // elements that differed from the exact expected values, all ranks
	Ranks  int
	Repeat int
}

// BusFactor is nccl-tests' bus bandwidth factor for op over n ranks.
func BusFactor(op string, n int) float64 {
	switch op {
	case "allreduce":
		return 2 * float64(n-1) / float64(n)
	case "reducescatter", "allgather", "alltoall":
		return float64(n-1) / float64(n)
	}
	return 1
}

// BenchConfig drives RunBench.
type BenchConfig struct {
	Ops    []string
	Sizes  []int // bytes
	Iters  int   // operations per timed repetition
	Warmup int   // untimed operations before timing
	Reps   int   // timed repetitions; the median is reported
}

// RunBench must be called by every member of c with the same config. It
// checks each operation once against exact values, then times it. Every
// rank gets the same results.
func RunBench(ctx context.Context, c *Comm, cfg BenchConfig) ([]BenchResult, error) {
	var out []BenchResult
	for _, op := range cfg.Ops {
		if !slices.Contains(BenchOps, op) {
			return nil, fmt.Errorf("unknown operation %q (known: %s)", op, strings.Join(BenchOps, ", "))
		}
		for _, size := range cfg.Sizes {
			r, err := benchOne(ctx, c, op, size, cfg)
			if err != nil {
				return nil, fmt.Errorf("%s %d bytes: %w", op, size, err)
			}
			out = append(out, r)
		}
	}
	return out, nil
}

type benchCase struct {
	count int
	run   func(ctx context.Context) error
	fill  func(pattern bool)
	check func() int
}

func makeCase(c *Comm, op string, bytes int) benchCase {
	n, r := c.Size(), c.Rank()
	count := bytes / 4
	pat := func(rank, i int) float32 { return float32((i*7+rank*13)%1000) - 300 }
	// fillPat zeroes buf, or writes this rank's pattern into it when on.
	fillPat := func(buf []float32, on bool) {
		for i := range buf {
			buf[i] = 0
			if on {
				buf[i] = pat(r, i)
			}
		}
	}
	sum := func(i int) float32 {
		var s float32
		for q := range n {
			s += pat(q, i)
		}
		return s
	}
	switch op {
	case "allreduce":
		buf := make([]float32, count)
		return benchCase{count: count,
			run:  func(ctx context.Context) error { return c.AllReduce(ctx, buf, Sum) },
			fill: func(p bool) { fillPat(buf, p) },
			check: func() int {
				w := 0
				for i := range buf {
					if buf[i] != sum(i) {
						w++
					}
				}
				return w
			}}
	case "reducescatter", "allgather", "alltoall":
		m := count / n
		count = m * n
		big := make([]float32, count)
		small := make([]float32, m)
		cs := benchCase{count: count}
		switch op {
		case "reducescatter":
			cs.run = func(ctx context.Context) error { return c.ReduceScatter(ctx, big, small, Sum) }
			cs.fill = func(p bool) { fillPat(big, p) }
			cs.check = func() int {
				w := 0
				for i := range small {
					if small[i] != sum(r*m+i) {
						w++
					}
				}
				return w
			}
		case "allgather":
			cs.run = func(ctx context.Context) error { return c.AllGather(ctx, small, big) }
			cs.fill = func(p bool) { fillPat(small, p) }
			cs.check = func() int {
				w := 0
				for i := range big {
					if big[i] != pat(i/m, i%m) {
						w++
					}
				}
				return w
			}
		case "alltoall":
			recv := make([]float32, count)
			cs.run = func(ctx context.Context) error { return c.AllToAll(ctx, big, recv) }
			cs.fill = func(p bool) { fillPat(big, p) }
			cs.check = func() int {
				w := 0
				for j := range n {
					for i := range m {
						if recv[j*m+i] != pat(j, r*m+i) {
							w++
						}
					}
				}
				return w
			}
		}
		return cs
	default: // broadcast from rank 0
		buf := make([]float32, count)
		return benchCase{count: count,
			run:  func(ctx context.Context) error { return c.Broadcast(ctx, buf, 0) },
			fill: func(p bool) { fillPat(buf, p && r == 0) }, // only the root holds data
			check: func() int {
				w := 0
				for i := range buf {
					if buf[i] != pat(0, i) {
						w++
					}
				}
				return w
			}}
	}
}

func benchOne(ctx context.Context, c *Comm, op string, bytes int, cfg BenchConfig) (BenchResult, error) {
	n := c.Size()
	cs := makeCase(c, op, bytes)
	cs.fill(true)
	if err := cs.run(ctx); err != nil {
		return BenchResult{}, err
	}
	wrong := []float32{float32(cs.check())}
	if err := c.AllReduce(ctx, wrong, Sum); err != nil {
		return BenchResult{}, err
	}
	cs.fill(false) // zeros: repeated sums stay finite and normal
	for range cfg.Warmup {
		if err := cs.run(ctx); err != nil {
			return BenchResult{}, err
		}
	}
	reps := max(cfg.Reps, 1)
	iters := max(cfg.Iters, 1)
	times := make([]float64, 0, reps)
	mine := make([]float32, 1)
	all := make([]float32, n)
	for range reps {
		if err := c.Barrier(ctx); err != nil {
			return BenchResult{}, err
		}
		t0 := time.Now()
		for range iters {
			if err := cs.run(ctx); err != nil {
				return BenchResult{}, err
			}
		}
		mine[0] = float32(time.Since(t0).Seconds() / float64(iters))
		if err := c.AllGather(ctx, mine, all); err != nil {
			return BenchResult{}, err
		}
		times = append(times, float64(slices.Max(all)))
	}
	slices.Sort(times)
	med := times[len(times)/2]
	if len(times)%2 == 0 {
		med = (times[len(times)/2-1] + times[len(times)/2]) / 2
	}
	res := BenchResult{Op: op, Bytes: cs.count * 4, Count: cs.count, Time: time.Duration(med * 1e9),
		Wrong: int(wrong[0]), Ranks: n, Repeat: reps}
	if med > 0 {
		res.AlgBW = float64(res.Bytes) / med / 1e9
		res.BusBW = res.AlgBW * BusFactor(op, n)
	}
	return res, nil
}
