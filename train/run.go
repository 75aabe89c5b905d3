package train

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/moe"
	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/tensor"
)

// Progress is reported after every step of Run.
type Progress struct {
	Step, Steps  int // Step is the number of steps done
	Loss         float64
	TokensPerSec float64 // training throughput so far (validation time excluded)
	Elapsed, ETA time.Duration
	ValLoss      float64 // NaN unless validation ran after this step
}

// RunOptions tune Run.
type RunOptions struct {
	// Log receives the structured logs (zerolog.Nop() to silence).
	Log zerolog.Logger
	// OnProgress, if set, is called on Run's goroutine after every step.
	OnProgress func(Progress)
	// Corpus, if set, replaces loading cfg.Data.Path (window and pack
	// modes; bucket mode always loads cfg.Data).
	Corpus *sampling.Corpus
	// Checkpoint configures periodic checkpoints and resume (zero value:
	// none).
	Checkpoint CheckpointOptions
	// ProfileGPU, on the GPU, times the device work of every step after
	// the first three by kernel family and logs it at the end.
	ProfileGPU bool
}

// CurvePoint is one step of the training curve.
type CurvePoint struct {
	Step     int     `json:"step"`
	Loss     float64 `json:"loss"`
	CE       float64 `json:"ce"`
	Aux      float64 `json:"aux"`
	GradNorm float64 `json:"grad_norm"`
}

// ValPoint is one validation of the run.
type ValPoint struct {
	Step int     `json:"step"`
	Loss float64 `json:"loss"`
}

// Summary describes a finished (or cancelled) Run.
type Summary struct {
	Steps        int           `json:"steps"`
	Tokens       int64         `json:"tokens"`  // input positions processed (B·T, padding included)
	Targets      int64         `json:"targets"` // non-ignored targets trained on
	Elapsed      time.Duration `json:"elapsed_ns"`
	TokensPerSec float64       `json:"tokens_per_sec"`
	Train        []CurvePoint  `json:"train"`
	Val          []ValPoint    `json:"val"`
	// PaddingFraction is the share of input positions without a target
	// (padding, and the input side of two-length examples): 1 − Targets/Tokens.
	PaddingFraction float64 `json:"padding_fraction"`
}

// Run trains cfg single-process: it sets the thread budget from
// cfg.Train.Threads, loads the data, builds the sampler and the Trainer,
// takes cfg.Train.Steps steps with periodic validation, and returns the
// curves. Cancelling ctx stops it between steps; the Summary so far comes
// back with the context's error.
func Run(ctx context.Context, cfg JobConfig, opts RunOptions) (Summary, error) {
	var sum Summary
	if err := cfg.Validate(); err != nil {
		return sum, fmt.Errorf("train: %w", err)
	}
	log := opts.Log
	tensor.SetThreads(cfg.Train.Threads)
	data, sampler, err := singleData(cfg, opts.Corpus)
	if err != nil {
		return sum, fmt.Errorf("train: data: %w", err)
	}
	var val []sampling.Batch
	if cfg.Train.EvalEvery > 0 {
		if val, err = data.ValBatches(cfg.Train.EvalBatches); err != nil {
			log.Warn().Err(err).Msg("training without validation")
			val = nil
		}
	}
	tr, err := NewTrainer(cfg, log)
	if err != nil {
		return sum, err
	}
	defer tr.Close()
	ckpt, err := startCheckpoints(opts.Checkpoint, tr, sampler, log)
	if err != nil {
		return sum, fmt.Errorf("train: %w", err)
	}
	startStep := tr.Step()
	ev := log.Info().Str("mode", data.Config.Mode)
	if data.Corpus != nil {
		ev = ev.Str("corpus", data.Corpus.Name).Int("train_docs", len(data.Corpus.Train)).Int("val_docs", len(data.Corpus.Val))
	}
	if p := data.Prepared; p != nil {
		ev = ev.Str("prepared", data.Config.Path).Int("train_docs", p.TrainDocs()).Int("val_docs", p.ValDocs())
	}
	ev.Int("params", tr.Layout().Total).Int("threads", tensor.Threads()).Int("steps", cfg.Train.Steps).Msg("training")

	var trainTime time.Duration
	start := time.Now()
	for tr.Step() < cfg.Train.Steps {
		if err := ctx.Err(); err != nil {
			sum.Elapsed = time.Since(start)
			_ = ckpt.finish(context.Background(), time.Minute)
			return sum, fmt.Errorf("train: stopped at step %d: %w", tr.Step(), err)
		}
		t0 := time.Now()
		b, err := sampler.Next()
		if err != nil {
			return sum, fmt.Errorf("train: step %d: data: %w", tr.Step(), err)
		}
		if opts.ProfileGPU && tr.Step() == startStep+3 {
			tr.StartGPUProfile()
		}
		st, gnorm, err := tr.TrainStep(b)
		if err != nil {
			return sum, err
		}
		if err := tr.UpdateRouterBias(st.RoutedLoad); err != nil {
			return sum, fmt.Errorf("train: step %d: %w", tr.Step(), err)
		}
		trainTime += time.Since(t0)
		step := tr.Step()
		if err := ckpt.afterStep(ctx, tr, sampler, step == cfg.Train.Steps); err != nil {
			return sum, fmt.Errorf("train: %w", err)
		}
		if math.IsNaN(st.Loss) || math.IsInf(st.Loss, 0) {
			return sum, fmt.Errorf("train: step %d: loss is %v", step, st.Loss)
		}
		sum.Steps = step
		sum.Tokens += int64(st.Tokens)
		sum.Targets += int64(st.Targets)
		sum.Train = append(sum.Train, CurvePoint{Step: step, Loss: st.Loss, CE: st.CE, Aux: st.Aux, GradNorm: gnorm})
		tps := float64(sum.Tokens) / trainTime.Seconds()
		if step%cfg.Train.LogEvery == 0 || step == 1 {
			log.Info().Int("step", step).Float64("loss", st.Loss).Float64("ce", st.CE).Float64("aux", st.Aux).
				Float64("grad_norm", gnorm).Float64("lr", tr.sched.LR(step-1)).Float64("tokens_per_sec", math.Round(tps)).
				Func(func(e *zerolog.Event) { LogRouterLoad(e, st.Router) }).Msg("step")
		}
		valLoss := math.NaN()
		if len(val) > 0 && (step%cfg.Train.EvalEvery == 0 || step == cfg.Train.Steps) {
			valLoss, err = tr.Evaluate(val)
			if err != nil {
				return sum, err
			}
			sum.Val = append(sum.Val, ValPoint{Step: step, Loss: valLoss})
			log.Info().Int("step", step).Float64("val_loss", valLoss).Msg("validation")
		}
		if opts.OnProgress != nil {
			perStep := trainTime / time.Duration(step-startStep)
			opts.OnProgress(Progress{
				Step: step, Steps: cfg.Train.Steps, Loss: st.Loss, TokensPerSec: tps,
				Elapsed: time.Since(start), ETA: perStep * time.Duration(cfg.Train.Steps-step), ValLoss: valLoss,
			})
		}
	}
	if err := ckpt.finish(ctx, 10*time.Minute); err != nil {
		return sum, fmt.Errorf("train: %w", err)
	}
	sum.Elapsed = time.Since(start)
	if trainTime > 0 {
		sum.TokensPerSec = float64(sum.Tokens) / trainTime.Seconds()
	}
	if sum.Tokens > 0 {
		sum.PaddingFraction = 1 - float64(sum.Targets)/float64(sum.Tokens)
	}
	if gs, ok := tr.GPUStats(); ok {
		ev := log.Info().Float64("peak_allocated_gib", float64(gs.PeakAllocated)/(1<<30)).Float64("in_use_gib", float64(gs.InUse)/(1<<30))
		if gs.Steps > 0 {
			ev = ev.Int("profiled_steps", gs.Steps)
			for f, ms := range gs.FamilyMS {
				ev = ev.Float64(f+"_ms", ms)
			}
			ev = ev.Float64("device_span_ms", gs.WallMS).Float64("gemm_plans", gs.GemmPlans).Float64("gemm_plan_ms", gs.GemmPlanMS)
			ev = ev.Strs("top_kernels_ms", gs.TopKernels)
		}
		ev.Msg("gpu")
	}
	log.Info().Int("steps", sum.Steps).Int64("tokens", sum.Tokens).Float64("tokens_per_sec", math.Round(sum.TokensPerSec)).
		Float64("padding_fraction", sum.PaddingFraction).
		Str("elapsed", sum.Elapsed.Round(time.Millisecond).String()).Msg("done")
	return sum, nil
}

// singleData is openData with its training sampler for a single process
// (rank 0 of 1).
func singleData(cfg JobConfig, corpus *sampling.Corpus) (*sampling.Data, sampling.Sampler, error) {
	data, err := openData(cfg, corpus)
	if err != nil {
		return nil, nil, err
	}
	s, err := data.Sampler(0, 1)
	return data, s, err
}

// openData loads cfg.Data, or wraps corpus (window and pack modes) when the
// caller supplies one.
func openData(cfg JobConfig, corpus *sampling.Corpus) (*sampling.Data, error) {
	if corpus == nil || cfg.Data.Mode == sampling.ModeBucket || cfg.Data.Mode == sampling.ModeRandom {
		return sampling.Open(cfg.DataConfig(), cfg.Train.Seed)
	}
	dc := cfg.Data.WithDefaults()
	return &sampling.Data{Config: dc, Seed: cfg.Train.Seed + dc.SeedOffset, Corpus: corpus}, nil
}

// LogRouterLoad adds a step's routing load to a log event under the keys
// every runner uses: max_load (the largest expert load over the mean among
// the layers; 1 = balanced), imbalance (the largest IS = (max − min)/tokens
// over expert-parallel ranks) and drop_rate (the share of slots dropped by
// capacity, averaged over layers), and expert_load (per layer, the slots
// each expert processed: [layer][expert]; what `coordinator plot` draws).
// Nothing is added without MoE layers.
func LogRouterLoad(e *zerolog.Event, stats []moe.LoadStats) {
	if len(stats) == 0 {
		return
	}
	maxLoad, is, drop := 0.0, 0.0, 0.0
	perExpert := make([][]int, len(stats))
	for l, s := range stats {
		maxLoad, is, drop = max(maxLoad, s.MaxMean), max(is, s.IS), drop+s.DropRate
		perExpert[l] = s.PerExpert
	}
	e.Float64("max_load", maxLoad).Float64("imbalance", is).Float64("drop_rate", drop/float64(len(stats))).
		Interface("expert_load", perExpert)
}
