package sp

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/moetrain/moetrain/tensor"
)

// TestRunBench runs the benchmark harness on a tiny shaped problem: every
// schedule completes and reports positive times (no timing assertions).
func TestRunBench(t *testing.T) {
	res, cfg, err := RunBench(context.Background(), BenchConfig{SP: 3, SeqLen: 24, Batch: 1, Heads: 2, HeadDim: 4,
		LinkBandwidth: 1e9, LinkLatency: 10 * time.Microsecond, Iters: 2, Warmup: 1, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Threads < 1 {
		t.Errorf("threads %d not filled in", cfg.Threads)
	}
	if len(res) != 3 || res[0].Name != "compute-only" || res[1].Name != "ring" || res[2].Name != "tokenring" {
		t.Fatalf("results %+v", res)
	}
	for _, r := range res {
		if r.Forward <= 0 || r.Backward <= 0 || r.Total <= 0 {
			t.Errorf("%s: times %+v", r.Name, r)
		}
	}
	if _, _, err := RunBench(context.Background(), BenchConfig{SP: 4, SeqLen: 20, Batch: 1, Heads: 1, HeadDim: 1, Iters: 1}); err == nil {
		t.Error("sequence length 20 with SP 4: no error")
	}
}

// BenchmarkSP times one forward+backward pass of all ranks (goroutines over
// the in-process transport, links shaped to 500 MB/s and 20µs) per iteration;
// compare the schedules against compute-only in the same run.
func BenchmarkSP(b *testing.B) {
	cfg := BenchConfig{SP: 4, SeqLen: 1024, Batch: 1, Heads: 4, HeadDim: 64, LinkBandwidth: 500e6,
		LinkLatency: 20 * time.Microsecond, Iters: 1}
	w, err := newBenchWorld(cfg)
	if err != nil {
		b.Fatal(err)
	}
	// The ranks share the process's cores: one kernel budget for all of them.
	prev := tensor.Threads()
	tensor.SetThreads(w.cfg.Threads)
	defer tensor.SetThreads(prev)
	for _, sc := range benchSchedules {
		b.Run(fmt.Sprintf("sp%d/%s", cfg.SP, sc.name), func(b *testing.B) {
			for b.Loop() {
				if _, _, err := w.iter(context.Background(), sc.alg, sc.sim); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
