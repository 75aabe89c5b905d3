package cluster

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/tensor"
	"github.com/moetrain/moetrain/train"
)

// CollectiveTimeout bounds every collective of the DP runner: a peer silent
// for this long fails the step on every surviving rank.
const CollectiveTimeout = 60 * time.Second

// RunDP is the data-parallel runner: every rank holds the whole model, draws
// its own batches (sampler stream = dp index), and after each backward the
// gradients are averaged over the data-parallel group before the optimizer
// step, so every replica stays identical. Rank 0 runs periodic validation.
// Plans with tp, sp or ep > 1 are refused (their runners plug in here later).
func RunDP(ctx context.Context, spec StartSpec) error {
	m, cfg, log := spec.Plan.Mesh, spec.Job, spec.Log
	if m.TP != 1 || m.SP != 1 || m.EP != 1 {
		return fmt.Errorf("dp runner: plan %v needs tensor/sequence/expert parallelism, which this runner does not support yet (use tp = sp = ep = 1)", m)
	}
	if cfg.Data.Mode != sampling.ModeWindow {
		return fmt.Errorf("dp runner: data.mode = %q is not supported yet (use \"window\")", cfg.Data.Mode)
	}
	threads := spec.Threads
	if threads <= 0 {
		threads = cfg.Train.Threads
	}
	tensor.SetThreads(threads)
	dpIdx, dpSize := m.Coord(spec.Rank).DP, m.DP

	corpus, err := sampling.LoadCorpus(cfg.Data.Path, cfg.Data.ValFraction, cfg.Train.Seed)
	if err != nil {
		return fmt.Errorf("dp runner: data: %w", err)
	}
	sampler, err := sampling.NewWindowSampler(corpus.Train, cfg.Data.SeqLen, cfg.Data.BatchSize,
		cfg.Train.Seed+cfg.Data.SeedOffset, dpIdx, dpSize)
	if err != nil {
		return fmt.Errorf("dp runner: sampler for dp rank %d of %d: %w", dpIdx, dpSize, err)
	}
	var val []sampling.Batch
	if spec.Rank == 0 && cfg.Train.EvalEvery > 0 && len(corpus.Val) > 0 {
		// The same validation batches as the standalone trainer, so curves compare.
		val, err = sampling.FixedBatchesErr(corpus.Val, cfg.Data.SeqLen, cfg.Data.BatchSize, cfg.Train.EvalBatches, cfg.Train.Seed^0x5eed)
		if err != nil {
			return fmt.Errorf("dp runner: validation batches: %w", err)
		}
	}
	tr, err := train.NewTrainer(cfg, log)
	if err != nil {
		return fmt.Errorf("dp runner: %w", err)
	}

	dctx, cancel := context.WithTimeout(ctx, CollectiveTimeout)
	t, err := spec.Data.Connect(dctx, spec.Rank, spec.Plan.Addrs(), spec.Token)
	cancel()
	if err != nil {
		return fmt.Errorf("dp runner: %w", err)
	}
	defer t.Close()
	world := collective.NewWorldConfig(t, collective.Config{Timeout: CollectiveTimeout})
	dp, err := world.Sub(m.Group(parallel.AxisDP, spec.Rank))
	if err != nil {
		return fmt.Errorf("dp runner: data-parallel group: %w", err)
	}
	log.Info().Int("params", tr.Layout().Total).Int("threads", tensor.Threads()).Int("dp_rank", dpIdx).
		Int("dp_size", dpSize).Int("steps", cfg.Train.Steps).Msg("data-parallel training")

	stats := make([]float32, 2)
	var tokens int64
	var trainTime time.Duration
	for tr.Step() < cfg.Train.Steps {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("dp runner: stopped before step %d: %w", tr.Step()+1, err)
		}
		t0 := time.Now()
		b, err := sampler.Next()
		if err != nil {
			return fmt.Errorf("dp runner: step %d: data: %w", tr.Step()+1, err)
		}
		st, loss, gnorm, err := dpStep(ctx, tr, dp, b, stats)
		if err != nil {
			return err
		}
		trainTime += time.Since(t0)
		tokens += int64(st.Tokens)
		step := tr.Step()
		if math.IsNaN(loss) || math.IsInf(loss, 0) {
			return fmt.Errorf("dp runner: step %d: loss is %v", step, loss)
		}
		u := ProgressUpdate{Step: step, Loss: loss, Tokens: tokens, TokensPerSec: float64(tokens) / trainTime.Seconds()}
		if len(val) > 0 && (step%cfg.Train.EvalEvery == 0 || step == cfg.Train.Steps) {
			v, err := tr.Evaluate(val)
			if err != nil {
				return fmt.Errorf("dp runner: step %d: validation: %w", step, err)
			}
			u.HasVal, u.ValLoss = true, v
		}
		spec.Report(u) // also stamps the step on the log lines below
		if step%cfg.Train.LogEvery == 0 || step == 1 {
			log.Info().Float64("loss", loss).Float64("local_loss", st.Loss).Float64("grad_norm", gnorm).
				Float64("tokens_per_sec", math.Round(u.TokensPerSec)).Msg("step")
		}
		if u.HasVal {
			log.Info().Float64("val_loss", u.ValLoss).Msg("validation")
		}
	}
	log.Info().Int("steps", tr.Step()).Int64("tokens", tokens).Dur("train_time", trainTime).Msg("done")
	return nil
}

// dpStep is one data-parallel step: forward/backward on this rank's batch,
// the gradient mean over the data-parallel group (started asynchronously, so
// the loss reduction rides along), then the optimizer step. stats is a
// 2-float scratch buffer. It returns the local stats, the group's mean loss
// and the gradient norm.
func dpStep(ctx context.Context, tr *train.Trainer, dp *collective.Comm, b sampling.Batch, stats []float32) (train.StepStats, float64, float64, error) {
	st, err := tr.ForwardBackward(b)
	if err != nil {
		return st, 0, 0, fmt.Errorf("dp runner: step %d: %w", tr.Step()+1, err)
	}
	gradReq := dp.AllReduceAsync(tr.Grads(), collective.Mean)
	stats[0], stats[1] = float32(st.Loss), float32(st.Tokens)
	cctx, cancel := context.WithTimeout(ctx, CollectiveTimeout)
	err = dp.AllReduce(cctx, stats, collective.Sum)
	if werr := gradReq.Wait(cctx); err == nil {
		err = werr
	}
	cancel()
	if err != nil {
		return st, 0, 0, fmt.Errorf("dp runner: step %d: gradient all-reduce over dp group %v: %w", tr.Step()+1, dp.WorldRanks(), err)
	}
	gnorm := tr.OptimizerStep()
	return st, float64(stats[0]) / float64(dp.Size()), gnorm, nil
}
