package stepmodel

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/optim"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/tensor"
	"github.com/moetrain/moetrain/train"
)

// CalibrateOptions are what calibration measures and how long.
type CalibrateOptions struct {
	Cores      int                  // cores of this host (0: runtime.NumCPU)
	RankMemory float64              // bytes one rank may use (0: 8 GiB)
	Inter      Link                 // inter-host link (not measurable on one host)
	Job        train.JobConfig      // the job whose serial step calibrates ComputeScale
	Steps      int                  // timed serial steps (0: 20)
	Reps       int                  // repetitions of each micro-benchmark; the median counts (0: 5)
	Log        func(string, ...any) // progress lines (nil: none)
}

// gemmShapes span the products a small MoE model's layers make (tokens ×
// outputs × inputs), from a routed chunk to a vocabulary head.
var gemmShapes = [][3]int{{64, 64, 64}, {256, 128, 128}, {512, 256, 128}, {1024, 384, 128}, {1024, 512, 256}, {2048, 512, 512}, {1024, 1024, 1024}}

// Calibrate measures this machine's profile: single-thread GEMM throughput
// by size and the parallel efficiency of the kernel threads, the attention
// kernels, elementwise memory traffic, the in-process link's per-message
// cost and per-byte copy cost, and ComputeScale from a serial training step
// of opt.Job against the kernel sum (docs/planner.md#calibration).
func Calibrate(ctx context.Context, opt CalibrateOptions) (*Profile, error) {
	if opt.Cores == 0 {
		opt.Cores = runtime.NumCPU()
	}
	if opt.RankMemory == 0 {
		opt.RankMemory = 8 << 30
	}
	if opt.Steps == 0 {
		opt.Steps = 20
	}
	if opt.Reps == 0 {
		opt.Reps = 5
	}
	logf := opt.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	prevThreads := tensor.Threads()
	defer tensor.SetThreads(prevThreads)
	p := &Profile{Device: fmt.Sprintf("cpu %s/%s, %d cores", runtime.GOOS, runtime.GOARCH, opt.Cores),
		Cores: opt.Cores, RankMemory: opt.RankMemory, Inter: opt.Inter, ComputeScale: 1}

	tensor.SetThreads(1)
	for _, s := range gemmShapes {
		sec := gemmTime(s, opt.Reps)
		fl := 2 * float64(s[0]*s[1]*s[2])
		p.Gemm = append(p.Gemm, GemmPoint{M: s[0], N: s[1], K: s[2], FLOPs: fl, GFLOPS: fl / sec / 1e9})
		logf("gemm %dx%dx%d: %.2f GFLOP/s", s[0], s[1], s[2], fl/sec/1e9)
	}
	if opt.Cores > 1 {
		s := [3]int{1024, 512, 256}
		one := gemmTime(s, opt.Reps)
		tensor.SetThreads(opt.Cores)
		all := gemmTime(s, opt.Reps)
		tensor.SetThreads(1)
		p.ParallelEfficiency = math.Min(1, math.Max(0, (one/all-1)/float64(opt.Cores-1)))
		logf("gemm on %d threads: speed-up %.2f (efficiency per extra thread %.2f)", opt.Cores, one/all, p.ParallelEfficiency)
	}
	if opt.Cores > 1 {
		p.AvailableCores = availableCores(opt.Cores, opt.Reps)
		logf("available cores: %.2f of %d (one-thread GEMM rounds in lockstep against one alone)", p.AvailableCores, opt.Cores)
	}
	var err error
	p.AttentionGFLOPS = attentionGFLOPS(opt.Reps)
	logf("attention: %.2f GFLOP/s", p.AttentionGFLOPS)
	p.ElementwiseGBps = elementwiseGBps(opt.Reps)
	logf("elementwise: %.2f GB/s", p.ElementwiseGBps)
	if p.OptimizerNs, err = optimizerNs(opt.Reps); err != nil {
		return nil, err
	}
	logf("AdamW: %.2f ns per parameter", p.OptimizerNs)
	if p.Intra, p.CopyBeta, err = linkCost(ctx, opt.Reps); err != nil {
		return nil, err
	}
	logf("in-process link: %.1f µs per message, %.3f ns per byte copied", p.Intra.Alpha*1e6, p.CopyBeta*1e9)

	// ComputeScale: one serial rank, one thread, against the kernel sum.
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("stepmodel: calibration produced a bad profile: %w", err)
	}
	serial := parallel.Mesh{DP: 1, SP: 1, TP: 1, EP: 1}
	meas, err := Measure(ctx, opt.Job, serial, Shape{}, opt.Steps, 2, 1)
	if err != nil {
		return nil, fmt.Errorf("stepmodel: calibration step: %w", err)
	}
	one := *p
	one.Cores = 1
	pred, err := Predict(opt.Job, serial, Single(1), &one)
	if err != nil {
		return nil, err
	}
	// The median step, as the model predicts median steps: what the
	// fastest kernel runs miss (routing, gathers, allocation, the GC, the
	// odd preemption) is in it.
	p.ComputeScale = meas.Median / pred.Step
	logf("serial step %.2f ms median (fastest %.2f ms), kernel sum %.2f ms: compute scale %.3f",
		meas.Median*1e3, meas.Min*1e3, pred.Step*1e3, p.ComputeScale)
	return p, p.Validate()
}

// bestOf runs fn reps times after one warm-up and returns the fastest
// duration in seconds: on a shared machine the fastest run is the one
// least disturbed, which is what a kernel costs when it has its core.
func bestOf(reps int, fn func()) float64 {
	fn()
	xs := make([]float64, reps)
	for i := range xs {
		t0 := time.Now()
		fn()
		xs[i] = time.Since(t0).Seconds()
	}
	return slices.Min(xs)
}

func fill(n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(i%7) * 0.01
	}
	return x
}

func gemmTime(s [3]int, reps int) float64 {
	m, n, k := s[0], s[1], s[2]
	a, b, c := fill(m*k), fill(k*n), make([]float32, m*n)
	return bestOf(reps, func() { tensor.Gemm(false, false, m, n, k, a, k, b, n, 0, c, n) })
}

// attentionGFLOPS times a causal forward and backward of one sequence (256
// positions, 4 heads of 64) and counts 4·T·(T/2)·c FLOPs forward and 2.5×
// that backward.
func attentionGFLOPS(reps int) float64 {
	const t, heads, dh = 256, 4, 64
	c := heads * dh
	sh := tensor.AttnShape{Batch: 1, Tq: t, Tk: t, Heads: heads, HeadDim: dh, QStride: c, KStride: c, VStride: c, OStride: c, Causal: true}
	q, k, v := fill(t*c), fill(t*c), fill(t*c)
	o, lse, do, d := make([]float32, t*c), make([]float32, t*heads), fill(t*c), make([]float32, t*heads)
	dq, dk, dv := make([]float32, t*c), make([]float32, t*c), make([]float32, t*c)
	sec := bestOf(reps, func() {
		tensor.AttentionForward(o, lse, q, k, v, sh)
		tensor.AttentionRowDot(d, do, o, sh)
		tensor.AttentionBackward(dq, dk, dv, do, q, k, v, lse, d, sh)
	})
	fl := 3.5 * 4 * float64(t) * float64(t/2) * float64(c)
	return fl / sec / 1e9
}

// elementwiseGBps times dst = a + b over 2M floats (three streams).
func elementwiseGBps(reps int) float64 {
	const n = 2 << 20
	a, b, dst := fill(n), fill(n), make([]float32, n)
	sec := bestOf(reps, func() { tensor.Add(dst, a, b) })
	return 3 * 4 * n / sec / 1e9
}

// availableCores runs cores goroutines in lockstep, as mesh ranks run:
// each does rounds of one-thread GEMMs (about a millisecond of work) and
// waits for the others at a barrier after each round; against the same
// rounds by one goroutine alone, the work done per unit of time, in
// goroutines' worth, is the cores concurrent ranks get here, including
// what a rank loses waiting for a peer the host has descheduled. The
// median of the trials, at most cores.
func availableCores(cores, reps int) float64 {
	s := [3]int{512, 384, 128}
	a, b := fill(s[0]*s[2]), fill(s[2]*s[1])
	const rounds, perRound = 10, 4
	work := func(c []float32) {
		for range perRound {
			tensor.Gemm(false, false, s[0], s[1], s[2], a, s[2], b, s[1], 0, c, s[1])
		}
	}
	cs := make([][]float32, cores)
	for i := range cs {
		cs[i] = make([]float32, s[0]*s[1])
	}
	var got []float64
	for range max(reps/2, 5) {
		t0 := time.Now()
		for range rounds {
			work(cs[0])
		}
		one := time.Since(t0).Seconds()
		t0 = time.Now()
		for range rounds {
			var wg sync.WaitGroup // the barrier
			for i := range cores {
				wg.Add(1)
				go func() { defer wg.Done(); work(cs[i]) }()
			}
			wg.Wait()
		}
		all := time.Since(t0).Seconds()
		got = append(got, math.Min(float64(cores), float64(cores)*one/all))
	}
	return median(got)
}

// optimizerNs times one AdamW update of 1M parameters.
func optimizerNs(reps int) (float64, error) {
	const n = 1 << 20
	o, err := optim.NewAdamW(optim.DefaultConfig(), 0, n)
	if err != nil {
		return 0, fmt.Errorf("stepmodel: optimizer calibration: %w", err)
	}
	params, grads := fill(n), fill(n)
	step := 0
	sec := bestOf(reps, func() {
		step++
		_, err = o.Update(params, grads, step, 1e-3, 1)
	})
	if err != nil {
		return 0, fmt.Errorf("stepmodel: optimizer calibration: %w", err)
	}
	return sec / n * 1e9, nil
}

// linkCost measures two in-process ranks: a 4-byte all-reduce gives the
// per-message cost, a 4 MiB one (ring: two messages of half the buffer
// each way) the per-byte cost.
func linkCost(ctx context.Context, reps int) (Link, float64, error) {
	ts := collective.NewInProcess(2)
	defer func() {
		for _, t := range ts {
			t.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	comms := []*collective.Comm{collective.NewWorld(ts[0]), collective.NewWorld(ts[1])}
	run := func(n int) (float64, error) {
		bufs := [][]float32{fill(n), fill(n)}
		var err1 error
		sec := bestOf(reps, func() {
			done := make(chan error, 1)
			go func() { done <- comms[1].AllReduce(ctx, bufs[1], collective.Sum) }()
			err := comms[0].AllReduce(ctx, bufs[0], collective.Sum)
			if e := <-done; err == nil {
				err = e
			}
			if err1 == nil {
				err1 = err
			}
		})
		return sec, err1
	}
	small, err := run(1)
	if err != nil {
		return Link{}, 0, fmt.Errorf("stepmodel: link calibration: %w", err)
	}
	const big = 1 << 20
	large, err := run(big)
	if err != nil {
		return Link{}, 0, fmt.Errorf("stepmodel: link calibration: %w", err)
	}
	alpha := small // one message each way, concurrently
	// Ring on two ranks: two steps, each moving half the buffer.
	perByte := math.Max(0, (large-2*alpha)/(2*4*big/2))
	return Link{Alpha: alpha, PerPeer: true}, perByte, nil
}
