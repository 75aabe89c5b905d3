// An external test package: it imports train, which may import dp to carry
// dp.Config in the job configuration.
package dp_test

import (
	"context"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/parallel/dp"
	"github.com/moetrain/moetrain/tensor"
	"github.com/moetrain/moetrain/train"
)

// benchSetup is the model, batch shape and bucket size of BenchmarkOverlap.
// By default a small model (d=128, 2 layers, 8 experts of 256) on 4×128
// tokens per rank with 1 MB buckets. MOETRAIN_DP_BENCH_CONFIG names a job
// TOML (or "reference" for train.DefaultJobConfig) whose [model] and
// data.batch_size / data.seq_len are used instead, with 25 MB buckets.
// MOETRAIN_DP_BENCH_BUCKET_MB and MOETRAIN_DP_BENCH_GBPS (link bandwidth in
// GB/s, default 1) override. Each rank's kernels get GOMAXPROCS/2 threads
// (as `coordinator launch` gives each of 2 workers), or
// MOETRAIN_DP_BENCH_THREADS.
func benchSetup(b *testing.B) (cfg model.Config, batch, seq int, bucketMB, gbps float64) {
	cfg = model.DefaultConfig()
	cfg.DModel, cfg.Layers, cfg.ExpertHidden, cfg.SeqLen = 128, 2, 256, 128
	batch, seq, bucketMB, gbps = 4, 128, 1, 1
	if p := os.Getenv("MOETRAIN_DP_BENCH_CONFIG"); p != "" {
		job := train.DefaultJobConfig()
		if p != "reference" {
			var err error
			if job, err = train.LoadJobConfig(p); err != nil {
				b.Fatal(err)
			}
		}
		cfg, batch, seq, bucketMB = job.Model, job.Data.BatchSize, job.Data.SeqLen, dp.DefaultConfig().BucketMB
	}
	for name, dst := range map[string]*float64{"MOETRAIN_DP_BENCH_BUCKET_MB": &bucketMB, "MOETRAIN_DP_BENCH_GBPS": &gbps} {
		if v := os.Getenv(name); v != "" {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || !(f > 0) {
				b.Fatalf("%s=%q: want a positive number", name, v)
			}
			*dst = f
		}
	}
	return cfg, batch, seq, bucketMB, gbps
}

// BenchmarkOverlap times one DP=2 forward+backward+gradient reduction with
// the goroutine ranks linked by a shaped in-process transport (1 GB/s by
// default), in three modes interleaved in every iteration: compute only (no
// reduction: the anchor), reduction after the backward (overlap off) and
// buckets reducing during the backward (overlap on). It reports the median
// step times and their ratios to the compute-only step. The optimizer step,
// identical in every mode, is left out.
func BenchmarkOverlap(b *testing.B) {
	cfg, batch, seq, bucketMB, gbps := benchSetup(b)
	const n = 2
	threads := max(1, runtime.GOMAXPROCS(0)/n)
	if v := os.Getenv("MOETRAIN_DP_BENCH_THREADS"); v != "" {
		var err error
		if threads, err = strconv.Atoi(v); err != nil || threads < 1 {
			b.Fatalf("MOETRAIN_DP_BENCH_THREADS=%q: want a positive integer", v)
		}
	}
	defer tensor.SetThreads(tensor.Threads())
	tensor.SetThreads(threads)
	inner := collective.NewInProcess(n)
	models := make([]*model.Model, n)
	on := make([]*dp.Reducer, n)
	off := make([]*dp.Reducer, n)
	inputs := make([]model.Input, n)
	for r := range n {
		t := collective.NewShaped(inner[r], collective.LinkShape{From: -1, To: -1, Bandwidth: gbps * 1e9})
		defer t.Close()
		m, err := model.New(cfg, 1)
		if err != nil {
			b.Fatal(err)
		}
		models[r], inputs[r] = m, benchInput(cfg, batch, seq, uint64(r))
		comm := collective.NewWorld(t)
		if on[r], err = dp.NewReducer(dp.Config{BucketMB: bucketMB, Overlap: true}, m.Layout, m.Grads, comm, nil); err != nil {
			b.Fatal(err)
		}
		if off[r], err = dp.NewReducer(dp.Config{BucketMB: bucketMB, Overlap: false}, m.Layout, m.Grads, comm, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("params %d (%.1f MB of gradients), %d buckets of ≤ %g MB, %d×%d tokens per rank, links %g GB/s, %d kernel threads per rank",
		models[0].Layout.Total, float64(models[0].Layout.Total)*4/1e6, len(on[0].Buckets()), bucketMB, batch, seq, gbps, threads)
	step := func(reds []*dp.Reducer) time.Duration {
		errs := make([]error, n)
		var wg sync.WaitGroup
		t0 := time.Now()
		for r := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := models[r]
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				if reds == nil {
					_, errs[r] = m.ForwardBackward(inputs[r])
					return
				}
				red := reds[r]
				m.OnGradsReady = red.Hook()
				if errs[r] = red.Begin(ctx, batch*seq); errs[r] != nil {
					return
				}
				if _, errs[r] = m.ForwardBackward(inputs[r]); errs[r] != nil {
					return
				}
				errs[r] = red.Finish(ctx)
			}()
		}
		wg.Wait()
		for r, err := range errs {
			if err != nil {
				b.Fatalf("rank %d: %v", r, err)
			}
		}
		return time.Since(t0)
	}
	step(on) // warm up: activations, buffer pools
	var tc, toff, ton []float64
	b.ResetTimer()
	for range b.N {
		tc = append(tc, step(nil).Seconds())
		toff = append(toff, step(off).Seconds())
		ton = append(ton, step(on).Seconds())
	}
	b.StopTimer()
	med := func(x []float64) float64 { slices.Sort(x); return x[len(x)/2] }
	c, f, o := med(tc), med(toff), med(ton)
	b.ReportMetric(c*1e3, "ms/compute")
	b.ReportMetric(f*1e3, "ms/overlap-off")
	b.ReportMetric(o*1e3, "ms/overlap-on")
	b.ReportMetric(f/c, "off/compute")
	b.ReportMetric(o/c, "on/compute")
	b.ReportMetric(0, "ns/op")
}

// benchInput is a batch of random tokens and targets.
func benchInput(cfg model.Config, b, tl int, seed uint64) model.Input {
	r := rand.New(rand.NewPCG(seed, 1))
	in := model.Input{B: b, T: tl}
	for i := 0; i < b*tl; i++ {
		in.Tokens = append(in.Tokens, int32(r.IntN(cfg.Vocab)))
		in.Targets = append(in.Targets, int32(r.IntN(cfg.Vocab)))
		in.Pos = append(in.Pos, int32(i%tl))
	}
	return in
}
