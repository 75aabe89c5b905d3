package sp

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/tensor"
)

// BenchConfig sets up a sequence-parallel attention benchmark: SP ranks run as
// goroutines of this process over the in-process transport, every link
// direction shaped to LinkBandwidth and LinkLatency (links form a full mesh:
// each ordered pair of ranks has its own link, as behind a switch).
type BenchConfig struct {
	SP, SeqLen, Batch, Heads, HeadDim int
	// LinkBandwidth in bytes per second per direction; 0 means unshaped.
	LinkBandwidth float64
	LinkLatency   time.Duration
	// Iters timed iterations (the median is reported) after Warmup ones.
	Iters, Warmup int
	// Threads is the kernel thread budget of the process (tensor.SetThreads)
	// during the benchmark, shared by the ranks' concurrent kernels; 0 means
	// max(1, GOMAXPROCS/SP), so the ranks together use the cores once.
	Threads int
	// Timeout bounds each pass of every rank; 0 means one minute.
	Timeout time.Duration
}

// BenchResult is the median time of one schedule.
type BenchResult struct {
	// Name is "compute-only" (TokenRing's per-rank kernel calls and merges with
	// no messages: the time communication could at best hide behind), "ring"
	// or "tokenring".
	Name string
	// Forward and Backward are medians of the wall time from a common start of
	// all ranks to the end of the slowest rank; Total is their sum.
	Forward, Backward, Total time.Duration
}

func (c *BenchConfig) defaults() error {
	if c.SP < 1 || c.Batch < 1 || c.Heads < 1 || c.HeadDim < 1 {
		return fmt.Errorf("sp bench: SP %d, batch %d, heads %d, head dim %d must be ≥ 1", c.SP, c.Batch, c.Heads, c.HeadDim)
	}
	if _, err := ChunkLen(c.SeqLen, c.SP); err != nil || c.SeqLen == 0 {
		return fmt.Errorf("sp bench: sequence length %d must be a positive multiple of 2·SP = %d", c.SeqLen, 2*c.SP)
	}
	if c.Iters < 1 || c.Warmup < 0 {
		return fmt.Errorf("sp bench: iters %d must be ≥ 1 and warmup %d ≥ 0", c.Iters, c.Warmup)
	}
	if c.LinkBandwidth < 0 || c.LinkLatency < 0 {
		return fmt.Errorf("sp bench: negative link bandwidth %g or latency %v", c.LinkBandwidth, c.LinkLatency)
	}
	if c.Threads <= 0 {
		c.Threads = max(1, runtime.GOMAXPROCS(0)/c.SP)
	}
	if c.Timeout <= 0 {
		c.Timeout = time.Minute
	}
	return nil
}

// benchRank is one rank's buffers.
type benchRank struct {
	comm                            *collective.Comm
	q, k, v, o, lse, do, dq, dk, dv []float32
}

// benchWorld is SP ranks ready to run passes.
type benchWorld struct {
	cfg   BenchConfig
	s     LocalShape
	ranks []*benchRank
}

func newBenchWorld(cfg BenchConfig) (*benchWorld, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	c, _ := ChunkLen(cfg.SeqLen, cfg.SP)
	w := &benchWorld{cfg: cfg, s: LocalShape{Batch: cfg.Batch, Chunk: c, Heads: cfg.Heads, HeadDim: cfg.HeadDim}.withDefaults()}
	ts := collective.NewInProcess(cfg.SP)
	shape := collective.LinkShape{From: -1, To: -1, Bandwidth: cfg.LinkBandwidth, Latency: cfg.LinkLatency}
	n, ns := w.s.Rows()*w.s.Width(), w.s.StatLen()
	for r := range cfg.SP {
		t := ts[r]
		if cfg.LinkBandwidth > 0 || cfg.LinkLatency > 0 {
			t = collective.NewShaped(t, shape)
		}
		rng := rand.New(rand.NewPCG(uint64(r), 2))
		rnd := func() []float32 {
			x := make([]float32, n)
			for i := range x {
				x[i] = float32(rng.NormFloat64())
			}
			return x
		}
		w.ranks = append(w.ranks, &benchRank{comm: collective.NewWorldConfig(t, collective.Config{Timeout: cfg.Timeout}),
			q: rnd(), k: rnd(), v: rnd(), do: rnd(), o: make([]float32, n), lse: make([]float32, ns),
			dq: make([]float32, n), dk: make([]float32, n), dv: make([]float32, n)})
	}
	return w, nil
}

// pass runs fn on every rank from a common start and returns the time until
// the slowest rank finished.
func (w *benchWorld) pass(ctx context.Context, fn func(ctx context.Context, r *benchRank) error) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	start := make(chan struct{})
	ends := make([]time.Time, len(w.ranks))
	errs := make([]error, len(w.ranks))
	var wg sync.WaitGroup
	for i, r := range w.ranks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = fn(ctx, r)
			ends[i] = time.Now()
		}()
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return 0, fmt.Errorf("sp rank %d: %w", i, err)
		}
	}
	var last time.Time
	for _, e := range ends {
		if e.After(last) {
			last = e
		}
	}
	return last.Sub(t0), nil
}

// iter times one forward pass and then one backward pass of alg (sim:
// compute-only).
func (w *benchWorld) iter(ctx context.Context, alg Algorithm, sim bool) (fwd, bwd time.Duration, err error) {
	fwd, err = w.pass(ctx, func(ctx context.Context, r *benchRank) error {
		return forward(ctx, r.comm, alg, sim, r.o, r.lse, r.q, r.k, r.v, w.s)
	})
	if err != nil {
		return 0, 0, fmt.Errorf("%s forward: %w", alg, err)
	}
	bwd, err = w.pass(ctx, func(ctx context.Context, r *benchRank) error {
		return backward(ctx, r.comm, alg, sim, r.dq, r.dk, r.dv, r.do, r.q, r.k, r.v, r.o, r.lse, w.s)
	})
	if err != nil {
		return 0, 0, fmt.Errorf("%s backward: %w", alg, err)
	}
	return fwd, bwd, nil
}

// benchSchedules are the schedules RunBench and BenchmarkSP time, in order
// (sim: compute-only, no messages).
var benchSchedules = []struct {
	name string
	alg  Algorithm
	sim  bool
}{{"compute-only", TokenRing, true}, {"ring", Ring, false}, {"tokenring", TokenRing, false}}

// RunBench times compute-only, ring and tokenring forward and backward passes
// (in that order within each iteration, so drifting machine load hits all
// three alike) and returns their medians. It sets the process's kernel thread
// budget to cfg.Threads while it runs.
func RunBench(ctx context.Context, cfg BenchConfig) ([]BenchResult, BenchConfig, error) {
	w, err := newBenchWorld(cfg)
	if err != nil {
		return nil, cfg, err
	}
	cfg = w.cfg
	prev := tensor.Threads()
	tensor.SetThreads(cfg.Threads)
	defer tensor.SetThreads(prev)
	scheds := benchSchedules
	fwd := make([][]time.Duration, len(scheds))
	bwd := make([][]time.Duration, len(scheds))
	for it := range cfg.Warmup + cfg.Iters {
		for i, sc := range scheds {
			f, b, err := w.iter(ctx, sc.alg, sc.sim)
			if err != nil {
				return nil, cfg, fmt.Errorf("sp bench %s: %w", sc.name, err)
			}
			if it >= cfg.Warmup {
				fwd[i] = append(fwd[i], f)
				bwd[i] = append(bwd[i], b)
			}
		}
	}
	out := make([]BenchResult, len(scheds))
	for i, sc := range scheds {
		tot := make([]time.Duration, len(fwd[i]))
		for j := range tot {
			tot[j] = fwd[i][j] + bwd[i][j]
		}
		out[i] = BenchResult{Name: sc.name, Forward: median(fwd[i]), Backward: median(bwd[i]), Total: median(tot)}
	}
	return out, cfg, nil
}

func median(x []time.Duration) time.Duration {
	s := slices.Clone(x)
	slices.Sort(s)
	return s[len(s)/2]
}

// MessageBytes reports the payload each rank puts on its busiest link
// direction per off-diagonal step, forward and backward, for alg: what the
// link bandwidth has to carry while one step computes.
func MessageBytes(alg Algorithm, s LocalShape) (fwd, bwd int) {
	rows := s.Batch * s.Chunk * s.Width() * 4 // one chunk of all sequences
	stat := s.Batch * s.Heads * s.Chunk * 4
	if alg == Ring {
		return 4 * rows, 8 * rows // K,V; K,V and dK,dV
	}
	return 2 * rows, 4*rows + 4*stat // Q; Q, dO, lse, D
}
