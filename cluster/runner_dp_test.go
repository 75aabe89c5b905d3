package cluster

import (
	"context"
	"fmt"
	"math"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/parallel/dp"
	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/train"
)

func tinyJob() train.JobConfig {
	cfg := train.DefaultJobConfig()
	cfg.Model.DModel, cfg.Model.Layers, cfg.Model.Heads, cfg.Model.SeqLen = 16, 2, 2, 16
	cfg.Model.Experts, cfg.Model.ExpertHidden = 4, 32
	cfg.Data.SeqLen, cfg.Data.BatchSize = 16, 2
	cfg.Train.Steps = 3
	// The aux loss depends on batch-wide routing statistics, which differ
	// between one rank's half batch and the whole batch; without it, the mean
	// of per-rank gradients equals the gradient of the concatenated batch.
	cfg.Model.AuxCoef = 0
	return cfg
}

// concat stacks batches row-wise.
func concat(bs []sampling.Batch) sampling.Batch {
	out := sampling.Batch{T: bs[0].T}
	for _, b := range bs {
		out.B += b.B
		out.Tokens = append(out.Tokens, b.Tokens...)
		out.Targets = append(out.Targets, b.Targets...)
		out.Pos = append(out.Pos, b.Pos...)
	}
	return out
}

// dpCase is one data-parallel layout under test.
type dpCase struct {
	n        int
	dp       dp.Config
	clip     float64
	ignoreOn int // rank whose batch has its first row's targets ignored (-1: none)
}

func (c dpCase) String() string {
	return fmt.Sprintf("n=%d/zero1=%v/overlap=%v/bucket=%gMB/clip=%g/ignore=%d", c.n, c.dp.Zero1, c.dp.Overlap, c.dp.BucketMB, c.clip, c.ignoreOn)
}

// dpRun is one parallel run: per rank, per step, the loss, gradient norm
// and reduced gradient, and the final parameters.
type dpRun struct {
	losses, norms [][]float64
	grads         [][][]float32
	shards        [][][2]int // ranges of grads that hold the reduced gradient
	params        [][]float32
}

func runDPRanks(t *testing.T, cfg train.JobConfig, c dpCase, batches []sampling.Batch, steps int) dpRun {
	t.Helper()
	n := c.n
	ts := collective.NewInProcess(n)
	run := dpRun{losses: make([][]float64, n), norms: make([][]float64, n), grads: make([][][]float32, n),
		shards: make([][][2]int, n), params: make([][]float32, n)}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := 0; r < n; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer ts[r].Close()
			tr, err := train.NewTrainer(cfg, zerolog.Nop())
			if err != nil {
				errs[r] = err
				return
			}
			w, err := newDPWorker(tr, collective.NewWorld(ts[r]), c.dp)
			if err != nil {
				errs[r] = err
				return
			}
			run.shards[r] = w.red.ShardRanges()
			if run.shards[r] == nil {
				run.shards[r] = [][2]int{{0, tr.Layout().Total}}
			}
			for s := 0; s < steps; s++ {
				_, loss, gnorm, err := w.step(context.Background(), batches[s*n+r])
				if err != nil {
					errs[r] = err
					return
				}
				run.losses[r] = append(run.losses[r], loss)
				run.norms[r] = append(run.norms[r], gnorm)
				run.grads[r] = append(run.grads[r], append([]float32(nil), tr.Grads()...))
			}
			run.params[r] = tr.Params()
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("%v: rank %d: %v", c, r, err)
		}
	}
	return run
}

// Parallel equals serial: n data-parallel ranks, each stepping on its own
// batch, end every step with the loss, reduced gradient and parameters of one
// serial trainer stepping on the concatenation of their batches, for ZeRO-1
// on and off, several buckets (some not divisible by n), clipping on and off
// and unequal target counts; and two runs are bitwise identical.
func TestDPStepEqualsSerial(t *testing.T) {
	corpus, err := sampling.DefaultCorpus()
	if err != nil {
		t.Fatal(err)
	}
	small := dp.Config{BucketMB: 3000 * 4 / 1e6, Overlap: true} // ~3000 floats: several buckets
	var cases []dpCase
	for _, n := range []int{1, 2, 3, 4} {
		for _, z := range []bool{false, true} {
			c := dpCase{n: n, dp: small, ignoreOn: -1}
			c.dp.Zero1 = z
			cases = append(cases, c)
		}
	}
	cases = append(cases,
		dpCase{n: 2, dp: dp.Config{BucketMB: 3000 * 4 / 1e6, Overlap: false}, ignoreOn: -1},
		dpCase{n: 2, dp: dp.DefaultConfig(), ignoreOn: -1},                                               // one bucket
		dpCase{n: 4, dp: dp.Config{BucketMB: 1e-6, Zero1: true, Overlap: true}, clip: 0.05, ignoreOn: 2}, // one tensor per bucket
		dpCase{n: 3, dp: small, clip: 0.05, ignoreOn: 1},
	)
	for _, c := range cases {
		t.Run(c.String(), func(t *testing.T) {
			cfg := tinyJob()
			cfg.Optim.ClipNorm = c.clip
			n, steps := c.n, 3
			batches := sampling.FixedBatches(corpus.Train, cfg.Data.SeqLen, cfg.Data.BatchSize, n*steps, 7)
			if c.ignoreOn >= 0 {
				for s := 0; s < steps; s++ {
					b := &batches[s*n+c.ignoreOn]
					tg := append([]int32(nil), b.Targets...)
					for i := 0; i < b.T; i++ {
						tg[i] = -1
					}
					b.Targets = tg
				}
			}
			serial, err := train.NewTrainer(cfg, zerolog.Nop())
			if err != nil {
				t.Fatal(err)
			}
			var serialLoss, serialNorm []float64
			var serialGrads [][]float32
			for s := 0; s < steps; s++ {
				st, err := serial.ForwardBackward(concat(batches[s*n : (s+1)*n]))
				if err != nil {
					t.Fatal(err)
				}
				serialGrads = append(serialGrads, append([]float32(nil), serial.Grads()...))
				serialNorm = append(serialNorm, serial.OptimizerStep())
				serialLoss = append(serialLoss, st.Loss)
			}
			run := runDPRanks(t, cfg, c, batches, steps)
			again := runDPRanks(t, cfg, c, batches, steps)
			var pscale float64
			for _, p := range serial.Params() {
				pscale = math.Max(pscale, math.Abs(float64(p)))
			}
			for r := 0; r < n; r++ {
				for s := range serialLoss {
					if d := math.Abs(run.losses[r][s] - serialLoss[s]); d > 1e-5*math.Abs(serialLoss[s]) {
						t.Errorf("rank %d step %d: loss %v, serial %v", r, s+1, run.losses[r][s], serialLoss[s])
					}
					if d := math.Abs(run.norms[r][s] - serialNorm[s]); d > 1e-5*serialNorm[s] {
						t.Errorf("rank %d step %d: gradient norm %v, serial %v", r, s+1, run.norms[r][s], serialNorm[s])
					}
					if run.losses[r][s] != again.losses[r][s] || run.norms[r][s] != again.norms[r][s] {
						t.Errorf("rank %d step %d: two runs differ: loss %v / %v, norm %v / %v", r, s+1,
							run.losses[r][s], again.losses[r][s], run.norms[r][s], again.norms[r][s])
					}
				}
				// Adam is nearly blind to the gradients' scale, so compare the
				// reduced gradients themselves (on the ranges this rank holds).
				for s := range serialGrads {
					scale, worst := 0.0, 0.0
					for _, g := range serialGrads[s] {
						scale = math.Max(scale, math.Abs(float64(g)))
					}
					for _, rg := range run.shards[r] {
						for i := rg[0]; i < rg[1]; i++ {
							worst = math.Max(worst, math.Abs(float64(run.grads[r][s][i]-serialGrads[s][i])))
						}
					}
					if worst > 1e-5*scale {
						t.Errorf("rank %d step %d: reduced gradients differ from serial by %g (max |g| %g)", r, s+1, worst, scale)
					}
				}
				worst := 0.0
				for i, p := range run.params[r] {
					worst = math.Max(worst, math.Abs(float64(p-serial.Params()[i])))
					if p != run.params[0][i] {
						t.Fatalf("replicas diverged at parameter %d: rank %d %v, rank 0 %v", i, r, p, run.params[0][i])
					}
					if math.Float32bits(p) != math.Float32bits(again.params[r][i]) {
						t.Fatalf("rank %d: two runs differ at parameter %d: %v / %v", r, i, p, again.params[r][i])
					}
				}
				if worst > 1e-4*pscale {
					t.Errorf("rank %d: parameters differ from serial by up to %g (max |p| %g)", r, worst, pscale)
				}
			}
		})
	}
}
