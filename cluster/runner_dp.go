package cluster

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/optim"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/parallel/dp"
	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/tensor"
	"github.com/moetrain/moetrain/train"
)

// CollectiveTimeout bounds every collective of the DP runner: a peer silent
// for this long fails the step on every surviving rank.
const CollectiveTimeout = 60 * time.Second

// RunDP is the data-parallel runner: every rank holds the whole model, draws
// its own batches (sampler stream = dp index), and its gradients are reduced
// over the data-parallel group in buckets that start during the backward
// (package parallel/dp; ZeRO-1 when configured), so every replica stays
// identical and equal to a serial trainer on the concatenated batches. Rank 0 runs periodic validation.
// Plans with tp, sp or ep > 1 go to RunMesh.
func RunDP(ctx context.Context, spec StartSpec) error {
	m, cfg, log := spec.Plan.Mesh, spec.Job, spec.Log
	if m.TP != 1 || m.SP != 1 || m.EP != 1 {
		return RunMesh(ctx, spec)
	}
	threads := spec.Threads
	if threads <= 0 {
		threads = cfg.Train.Threads
	}
	tensor.SetThreads(threads)
	dpIdx, dpSize := m.Coord(spec.Rank).DP, m.DP

	// The same data path as the standalone trainer (every data.mode), so a
	// one-rank job reproduces `worker train --standalone` and curves compare.
	data, err := sampling.Open(cfg.Data, cfg.Train.Seed)
	if err != nil {
		return fmt.Errorf("dp runner: data: %w", err)
	}
	sampler, err := data.Sampler(dpIdx, dpSize)
	if err != nil {
		return fmt.Errorf("dp runner: sampler for dp rank %d of %d: %w", dpIdx, dpSize, err)
	}
	var val []sampling.Batch
	if spec.Rank == 0 && cfg.Train.EvalEvery > 0 {
		if val, err = data.ValBatches(cfg.Train.EvalBatches); err != nil {
			log.Warn().Err(err).Msg("training without validation")
			val = nil
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
	dpComm, err := world.Sub(m.Group(parallel.AxisDP, spec.Rank))
	if err != nil {
		return fmt.Errorf("dp runner: data-parallel group: %w", err)
	}
	dcfg := dpConfigOf(cfg)
	w, err := newDPWorker(tr, dpComm, dcfg)
	if err != nil {
		return fmt.Errorf("dp runner: %w", err)
	}
	rc, _, err := openRankCheckpoints(ctx, spec, newDPState(tr, w.shards, sampler, dpIdx, dpSize))
	if err != nil {
		return fmt.Errorf("dp runner: %w", err)
	}
	log.Info().Int("params", tr.Layout().Total).Int("threads", tensor.Threads()).Int("dp_rank", dpIdx).
		Int("dp_size", dpSize).Int("steps", cfg.Train.Steps).Int("start_step", tr.Step()).Int("buckets", len(w.red.Buckets())).
		Bool("zero1", dcfg.Zero1).Bool("overlap", dcfg.Overlap).Msg("data-parallel training")

	var tokens, targets int64 // input positions (padding included) and non-ignored targets of this rank
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
		st, loss, gnorm, err := w.step(ctx, b)
		if err != nil {
			return err
		}
		trainTime += time.Since(t0)
		tokens += int64(st.Tokens)
		targets += int64(st.Targets)
		step := tr.Step()
		if math.IsNaN(loss) || math.IsInf(loss, 0) {
			return fmt.Errorf("dp runner: step %d: loss is %v", step, loss)
		}
		if err := rc.afterStep(ctx, step); err != nil {
			return fmt.Errorf("dp runner: %w", err)
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
	if err := rc.finish(ctx); err != nil {
		return fmt.Errorf("dp runner: %w", err)
	}
	padding := 0.0
	if tokens > 0 {
		padding = 1 - float64(targets)/float64(tokens)
	}
	log.Info().Int("steps", tr.Step()).Int64("tokens", tokens).Float64("padding_fraction", padding).
		Dur("train_time", trainTime).Msg("done")
	return nil
}

// dpConfigOf is the job's data-parallel settings (the [dp] section).
func dpConfigOf(cfg train.JobConfig) dp.Config { return cfg.DP }

// dpWorker is one data-parallel rank's step machinery: its trainer, the
// bucketed gradient reducer hooked into the backward, and under ZeRO-1 the
// AdamW states of its shards.
type dpWorker struct {
	tr     *train.Trainer
	comm   *collective.Comm
	cfg    dp.Config
	red    *dp.Reducer
	shards []*optim.AdamW
	stats  []float32 // Σ CE·targets, Σ targets, Σ aux, Σ z-loss
	load   []float32 // routed expert load of every layer, summed over the group for bias balancing
}

func newDPWorker(tr *train.Trainer, comm *collective.Comm, cfg dp.Config) (*dpWorker, error) {
	// EP = 1 here: expert tensors reduce over the data-parallel group too.
	red, err := dp.NewReducer(cfg, tr.Layout(), tr.Grads(), comm, comm)
	if err != nil {
		return nil, err
	}
	w := &dpWorker{tr: tr, comm: comm, cfg: cfg, red: red, stats: make([]float32, 4)}
	if cfg.Zero1 {
		if w.shards, err = tr.NewShardOptimizers(red.ShardRanges()); err != nil {
			return nil, err
		}
	}
	tr.SetGradsReadyHook(red.Hook())
	return w, nil
}

// step is one data-parallel step: forward/backward on this rank's batch with
// the gradient buckets reducing as they become final, the loss statistics
// reduced alongside, then the optimizer step (ZeRO-1: on this rank's shards,
// followed by the parameter all-gather). It returns the local stats, the
// global-batch loss (what the serial trainer reports on the concatenated
// batches) and the global gradient norm.
func (w *dpWorker) step(ctx context.Context, b sampling.Batch) (train.StepStats, float64, float64, error) {
	tr := w.tr
	stepNo := tr.Step() + 1
	targets := b.RealTokens()
	// The reducer's collectives carry the communicator's deadline from their
	// start; ctx only cancels them. The waits after the backward get their
	// own deadline, so a long backward does not eat into it.
	if err := w.red.Begin(ctx, targets); err != nil {
		return train.StepStats{}, 0, 0, fmt.Errorf("dp runner: step %d: %w", stepNo, err)
	}
	st, err := tr.ForwardBackward(b)
	if err != nil {
		// The reduction is abandoned: this rank leaves the job, and its peers'
		// collectives fail at their deadline or when the transport drops.
		return st, 0, 0, fmt.Errorf("dp runner: step %d: %w", stepNo, err)
	}
	w.stats[0], w.stats[1], w.stats[2], w.stats[3] = float32(st.CE*float64(st.Targets)), float32(st.Targets), float32(st.Aux), float32(st.ZLoss)
	statsReq := w.comm.AllReduceAsync(w.stats, collective.Sum)
	cctx, cancel := context.WithTimeout(ctx, CollectiveTimeout)
	defer cancel()
	err = w.red.Finish(cctx)
	if serr := statsReq.Wait(cctx); err == nil && serr != nil {
		err = fmt.Errorf("loss all-reduce over dp group %v: %w", w.comm.WorldRanks(), serr)
	}
	if err != nil {
		return st, 0, 0, fmt.Errorf("dp runner: step %d: %w", stepNo, err)
	}
	var ce float64
	if w.stats[1] > 0 {
		ce = float64(w.stats[0]) / float64(w.stats[1])
	}
	mc := tr.Config().Model
	n := float64(w.comm.Size())
	loss := ce + mc.AuxCoef*float64(w.stats[2])/n + mc.ZLossCoef*float64(w.stats[3])/n
	if mc.BiasUpdateRate > 0 {
		if err := w.updateRouterBias(cctx, st.RoutedLoad); err != nil {
			return st, 0, 0, fmt.Errorf("dp runner: step %d: %w", stepNo, err)
		}
	}
	if !w.cfg.Zero1 {
		return st, loss, tr.OptimizerStep(), nil
	}
	gnorm, err := w.red.GlobalNorm(cctx)
	if err != nil {
		return st, 0, 0, fmt.Errorf("dp runner: step %d: %w", stepNo, err)
	}
	if _, err := tr.OptimizerStepShards(w.shards, optim.ClipScale(gnorm, tr.Config().Optim.ClipNorm)); err != nil {
		return st, 0, 0, fmt.Errorf("dp runner: %w", err)
	}
	if err := w.red.GatherParams(cctx, tr.Params()); err != nil {
		return st, 0, 0, fmt.Errorf("dp runner: step %d: %w", stepNo, err)
	}
	return st, loss, gnorm, nil
}

// updateRouterBias sums the routed expert load over the data-parallel group
// (counts are integers far below 2^24, so float32 sums are exact) and applies
// the aux-loss-free bias update, identically on every replica.
func (w *dpWorker) updateRouterBias(ctx context.Context, load [][]int) error {
	w.load = w.load[:0]
	for _, l := range load {
		for _, c := range l {
			w.load = append(w.load, float32(c))
		}
	}
	if err := w.comm.AllReduce(ctx, w.load, collective.Sum); err != nil {
		return fmt.Errorf("expert-load all-reduce over dp group %v: %w", w.comm.WorldRanks(), err)
	}
	i := 0
	for _, l := range load {
		for e := range l {
			l[e] = int(w.load[i])
			i++
		}
	}
	return w.tr.UpdateRouterBias(load)
}
