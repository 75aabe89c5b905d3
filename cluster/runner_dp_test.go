package cluster

import (
	"context"
	"math"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/collective"
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

// Parallel equals serial: n data-parallel ranks, each stepping on its own
// batch, end every step with the parameters of one serial trainer stepping on
// the concatenation of their batches.
func TestDPStepEqualsSerial(t *testing.T) {
	for _, n := range []int{1, 2, 3} {
		cfg := tinyJob()
		corpus, err := sampling.DefaultCorpus()
		if err != nil {
			t.Fatal(err)
		}
		steps := 3
		batches := sampling.FixedBatches(corpus.Train, cfg.Data.SeqLen, cfg.Data.BatchSize, n*steps, 7)
		serial, err := train.NewTrainer(cfg, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		var serialLoss []float64
		var serialGrads [][]float32
		for s := 0; s < steps; s++ {
			st, err := serial.ForwardBackward(concat(batches[s*n : (s+1)*n]))
			if err != nil {
				t.Fatal(err)
			}
			serialGrads = append(serialGrads, append([]float32(nil), serial.Grads()...))
			serial.OptimizerStep()
			serialLoss = append(serialLoss, st.Loss)
		}

		ts := collective.NewInProcess(n)
		params := make([][]float32, n)
		losses := make([][]float64, n)
		grads := make([][][]float32, n) // [rank][step] reduced gradients
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
				comm := collective.NewWorld(ts[r])
				stats := make([]float32, 2)
				for s := 0; s < steps; s++ {
					_, loss, _, err := dpStep(context.Background(), tr, comm, batches[s*n+r], stats)
					if err != nil {
						errs[r] = err
						return
					}
					losses[r] = append(losses[r], loss)
					grads[r] = append(grads[r], append([]float32(nil), tr.Grads()...))
				}
				params[r] = tr.Params()
			}()
		}
		wg.Wait()
		for r := 0; r < n; r++ {
			if errs[r] != nil {
				t.Fatalf("n=%d rank %d: %v", n, r, errs[r])
			}
			for s := range serialLoss {
				if d := math.Abs(losses[r][s] - serialLoss[s]); d > 1e-5*math.Abs(serialLoss[s]) {
					t.Errorf("n=%d rank %d step %d: loss %v, serial %v", n, r, s+1, losses[r][s], serialLoss[s])
				}
			}
			// Adam is nearly blind to the gradients' scale, so compare the
			// reduced gradients themselves (Mean, not Sum).
			for s := range serialGrads {
				scale, worst := 0.0, 0.0
				for i, g := range serialGrads[s] {
					scale = math.Max(scale, math.Abs(float64(g)))
					worst = math.Max(worst, math.Abs(float64(grads[r][s][i]-g)))
				}
				if worst > 1e-5*scale {
					t.Errorf("n=%d rank %d step %d: reduced gradients differ from serial by %g (max |g| %g)", n, r, s+1, worst, scale)
				}
			}
			worst := 0.0
			for i, p := range params[r] {
				worst = math.Max(worst, math.Abs(float64(p-serial.Params()[i])))
				if r > 0 && p != params[0][i] {
					t.Fatalf("n=%d: replicas diverged at parameter %d: rank %d %v, rank 0 %v", n, i, r, p, params[0][i])
				}
			}
			if worst > 1e-4 {
				t.Errorf("n=%d rank %d: parameters differ from serial by up to %g", n, r, worst)
			}
		}
	}
}
