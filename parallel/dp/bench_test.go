// An external test package: it imports train, which may import dp to carry
// dp.Config in the job configuration.
package dp_test

import (
	"context"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/optim"
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

// BenchmarkOverlap times one DP=2 training step (forward, backward,
// gradient reduction, AdamW update) with the goroutine ranks linked by a
// shaped in-process transport (1 GB/s per direction by default), in four
// modes interleaved in every iteration: compute only (no reduction: the
// anchor), reduction after the backward (overlap off), buckets reducing
// during the backward on PlanBuckets' fixed layout plan ("layout"), and the
// Reducer's default, buckets cut at the backward's ranges ("cut"). It
// reports the median step times and ratios to the compute-only step, and
// each mode's median reduction tail (ms-tail: the communication still
// running after both ranks' backward ended) with the ratio it implies.
//
//	MOETRAIN_DP_BENCH_CONFIG=reference go test ./parallel/dp -run '^$' -bench Overlap -benchtime 10x
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
	opts := make([]*optim.AdamW, n)
	inputs := make([]model.Input, n)
	const nModes = 3
	reds := [nModes][]*dp.Reducer{} // overlap off, layout, cut
	for r := range n {
		t := collective.NewShaped(inner[r], collective.LinkShape{From: -1, To: -1, Bandwidth: gbps * 1e9})
		defer t.Close()
		m, err := model.New(cfg, 1)
		if err != nil {
			b.Fatal(err)
		}
		if opts[r], err = optim.NewAdamW(optim.DefaultConfig(), 0, m.Layout.Total); err != nil {
			b.Fatal(err)
		}
		models[r], inputs[r] = m, dp.RandomInput(cfg, batch, seq, uint64(r))
		comm := collective.NewWorld(t)
		for i, ov := range []bool{false, true, true} {
			red, err := dp.NewReducer(dp.Config{BucketMB: bucketMB, Overlap: ov}, m.Layout, m.Grads, comm, nil)
			if err != nil {
				b.Fatal(err)
			}
			if i == 1 {
				dp.CutAtLayout(red)
			}
			reds[i] = append(reds[i], red)
		}
	}
	steps := 0
	// step returns the step's wall time and its reduction tail: from the
	// end of the later rank's backward to the end of the later rank's
	// Finish, i.e. the communication left exposed, without the wait for a
	// straggling rank (which a loaded machine makes large and random).
	step := func(reds []*dp.Reducer) (wall, tail time.Duration) {
		steps++
		errs := make([]error, n)
		var bwdEnd, finEnd [n]time.Time
		var wg sync.WaitGroup
		t0 := time.Now()
		for r := range n {
			wg.Go(func() {
				m := models[r]
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				if reds != nil {
					red := reds[r]
					m.OnGradsReady = red.Hook()
					if errs[r] = red.Begin(ctx); errs[r] != nil {
						return
					}
				}
				_, errs[r] = m.ForwardBackward(inputs[r])
				bwdEnd[r] = time.Now()
				if reds != nil {
					if err := reds[r].Finish(ctx); errs[r] == nil {
						errs[r] = err
					}
				}
				finEnd[r] = time.Now()
				if errs[r] == nil {
					_, errs[r] = opts[r].Update(m.Params, m.Grads, steps, 1e-3, 1)
				}
			})
		}
		wg.Wait()
		for r, err := range errs {
			if err != nil {
				b.Fatalf("rank %d: %v", r, err)
			}
		}
		wall = time.Since(t0)
		later := func(t [n]time.Time) time.Time {
			return slices.MaxFunc(t[:], func(a, b time.Time) int { return a.Compare(b) })
		}
		return wall, later(finEnd).Sub(later(bwdEnd))
	}
	for i := range nModes { // warm up: activations, buffer pools, the cut
		step(reds[i])
	}
	b.Logf("params %d (%.1f MB of gradients), ≤ %g MB buckets: %d on the layout plan, %d cut at the backward's ranges; %d×%d tokens per rank, links %g GB/s, %d kernel threads per rank, GOMAXPROCS %d",
		models[0].Layout.Total, float64(models[0].Layout.Total)*4/1e6, bucketMB, len(reds[1][0].Buckets()), len(reds[2][0].Buckets()),
		batch, seq, gbps, threads, runtime.GOMAXPROCS(0))
	var tc []float64
	var tm, tt [nModes][]float64
	b.ResetTimer()
	for range b.N {
		w, _ := step(nil)
		tc = append(tc, w.Seconds())
		for i := range nModes {
			w, tail := step(reds[i])
			tm[i] = append(tm[i], w.Seconds())
			tt[i] = append(tt[i], tail.Seconds())
		}
	}
	b.StopTimer()
	// Ratios are medians of each iteration's own ratio (a mode against the
	// compute-only step just before it), which a machine whose load drifts
	// disturbs less than a ratio of medians. The tail ratio is
	// (compute-only + median tail) / compute-only: the step as it would be
	// with the ranks in lockstep.
	med := func(x []float64) float64 { x = slices.Clone(x); slices.Sort(x); return x[len(x)/2] }
	c := med(tc)
	b.ReportMetric(c*1e3, "ms/compute")
	for i, name := range []string{"overlap-off", "layout", "cut"} {
		ratios := make([]float64, len(tc))
		for k := range tc {
			ratios[k] = tm[i][k] / tc[k]
		}
		b.ReportMetric(med(tm[i])*1e3, "ms/"+name)
		b.ReportMetric(med(ratios), name+"/compute")
		b.ReportMetric(med(tt[i])*1e3, "ms-tail/"+name)
		b.ReportMetric((c+med(tt[i]))/c, name+"-tail/compute")
	}
	b.ReportMetric(0, "ns/op")
}
