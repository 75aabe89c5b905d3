package train

import (
	"fmt"
	"math"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/moe"
	"github.com/moetrain/moetrain/optim"
	"github.com/moetrain/moetrain/sampling"
)

// StepStats are one ForwardBackward's results.
type StepStats struct {
	Loss float64 // CE + aux_coef·Aux: the loss that was differentiated
	CE   float64 // mean cross-entropy over non-ignored targets
	Aux  float64 // Σ over layers of the aux load-balancing loss
	// Tokens is the number of input positions processed (B·T, padding
	// included); Targets the non-ignored ones the loss averages over.
	Tokens, Targets int
	// ZLoss is Σ over layers of the router z-loss (unweighted).
	ZLoss float64
	// RoutedLoad[l][e] is layer l's load before any capacity drop: what
	// bias balancing reacts to.
	RoutedLoad [][]int
	// Router holds each layer's load statistics (slots each expert
	// processed after capacity, padding tokens included, and per
	// expert-parallel rank, imbalance IS, max/mean load, drop rate), over
	// mesh.ep ranks, or model.groups when ep = 1.
	Router []moe.LoadStats
}

// Trainer is one rank's serial model, optimizer and step counter. The
// control plane drives it: ForwardBackward, (reduce Grads()), OptimizerStep.
// Not safe for concurrent use.
type Trainer struct {
	cfg   JobConfig
	log   zerolog.Logger
	m     *model.Model
	opt   *optim.AdamW
	sched optim.Schedule
	step  int
	// gpu (train.device = "cuda") runs the steps on a GPU; m's Params and
	// opt's moments are then host mirrors (see gpuState).
	gpu *gpuState
}

// NewTrainer validates cfg and builds the model with weights initialised
// from cfg.Train.Seed and zeroed optimizer state. It does not change the
// process's thread budget (see tensor.SetThreads).
func NewTrainer(cfg JobConfig, log zerolog.Logger) (*Trainer, error) {
	return newTrainer(cfg, model.Whole, true, log)
}

// newTrainer builds the trainer of the shard sh of the model (a tensor- or
// expert-parallel rank's, whose model needs Comms before its first forward:
// see MeshRank); without fullOptimizer its whole-buffer
// AdamW covers no parameters (a ZeRO-1 mesh rank keeps its optimizer state
// in shard optimizers, so two floats per parameter are never allocated).
func newTrainer(cfg JobConfig, sh model.Shard, fullOptimizer bool, log zerolog.Logger) (*Trainer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("train: %w", err)
	}
	if cfg.Train.Mode == ModeSPSA { // no gradients: worker.RunSPSA (cluster/worker) drives it
		return nil, fmt.Errorf(`train: train.mode = "spsa" runs under coordinator launch (or serve and worker --join), not the backprop trainer`)
	}
	m, err := model.NewSharded(cfg.Model, sh, cfg.Train.Seed)
	if err != nil {
		return nil, fmt.Errorf("train: %w", err)
	}
	hi := m.Layout.Total
	if !fullOptimizer {
		hi = 0
	}
	opt, err := optim.NewAdamW(cfg.Optim, 0, hi)
	if err != nil {
		return nil, fmt.Errorf("train: %w", err)
	}
	t := &Trainer{cfg: cfg, log: log, m: m, opt: opt, sched: optim.NewSchedule(cfg.Optim, cfg.Train.Steps)}
	if cfg.Train.Device == DeviceCUDA {
		if !sh.IsWhole() || !fullOptimizer {
			return nil, fmt.Errorf("train: train.device = \"cuda\" supports one rank holding the whole model (multi-GPU is not implemented yet)")
		}
		if err := t.openGPU(); err != nil {
			return nil, err
		}
	}
	log.Debug().Int("params", m.Layout.Total).Msg("trainer ready")
	return t, nil
}

func toInput(b sampling.Batch) model.Input {
	return model.Input{B: b.B, T: b.T, Tokens: b.Tokens, Targets: b.Targets, Pos: b.Pos, Seg: b.Seg}
}

// ForwardBackward zeroes the gradients, then runs forward and backward on b.
// Batches may change B and T from call to call (T ≤ model.seq_len).
func (t *Trainer) ForwardBackward(b sampling.Batch) (StepStats, error) {
	ep := t.statsEP()
	var m stepModel = t.m
	if g := t.gpu; g != nil {
		m = g.m
	}
	r, err := m.ForwardBackward(toInput(b))
	if err != nil {
		return StepStats{}, fmt.Errorf("train: step %d: %w", t.step, err)
	}
	stats, err := m.RouterStats(ep)
	if err != nil {
		return StepStats{}, fmt.Errorf("train: step %d: router stats: %w", t.step, err)
	}
	return StepStats{
		Loss: r.Loss, CE: r.CE, Aux: r.Aux, ZLoss: r.ZLoss, Tokens: b.B * b.T, Targets: r.Targets,
		RoutedLoad: m.RoutedLoad(), Router: stats,
	}, nil
}

// stepModel is what ForwardBackward needs of the model that holds the
// parameters: the CPU's (model.Model) or, on a GPU, gpu.Model.
type stepModel interface {
	ForwardBackward(model.Input) (model.Result, error)
	RouterStats(ep int) ([]moe.LoadStats, error)
	RoutedLoad() [][]int
}

// TrainStep is ForwardBackward followed by OptimizerStep, returning the
// step's statistics and the gradient norm; on the GPU without clipping the
// optimizer runs beside the backward (same result, less time). A device
// failure is its error.
func (t *Trainer) TrainStep(b sampling.Batch) (StepStats, float64, error) {
	if t.gpu != nil && t.cfg.Optim.ClipNorm <= 0 {
		return t.gpuTrainStep(b)
	}
	st, err := t.ForwardBackward(b)
	if err != nil {
		return StepStats{}, 0, err
	}
	gnorm := t.OptimizerStep()
	return st, gnorm, t.DeviceErr()
}

// statsEP is the expert-parallel degree the router's load metrics are
// computed for: the mesh's, or the router's groups on one rank.
func (t *Trainer) statsEP() int {
	if ep := t.cfg.Mesh.EP; ep > 1 {
		return ep
	}
	return max(1, t.cfg.Model.Groups)
}

// UpdateRouterBias applies one aux-loss-free balancing update from the
// expert load (callers with several ranks pass the load summed over them, so
// every replica's biases stay identical). A no-op when
// model.bias_update_rate is 0.
func (t *Trainer) UpdateRouterBias(load [][]int) error { return t.m.Balance.Update(load) }

// Params is the flat parameter buffer (layout: Layout()); callers may read
// it and, between steps, overwrite it (broadcast, checkpoint restore). On
// the GPU it is the host mirror, filled from the device by this call; a
// caller that overwrites it must call ParamsChanged afterwards.
func (t *Trainer) Params() []float32 {
	if err := t.syncFromDevice(); err != nil {
		t.log.Error().Err(err).Msg("parameters from the GPU")
		if t.gpu.err == nil {
			t.gpu.err = err
		}
	}
	return t.m.Params
}

// ParamsChanged copies the host parameters and optimizer moments to the
// GPU after a caller overwrote them (a no-op on the CPU).
func (t *Trainer) ParamsChanged() error { return t.syncToDevice() }

// Grads is the flat gradient buffer of the last ForwardBackward; a
// data-parallel caller all-reduces it in place before OptimizerStep. On the
// GPU (one rank) the gradients stay on the device and this buffer is not
// filled.
func (t *Trainer) Grads() []float32 { return t.m.Grads }

// Layout is the parameter layout table shared by params, grads and moments.
func (t *Trainer) Layout() model.Layout { return t.m.Layout }

// Model exposes the serial model (its layers are what parallel plans reuse).
func (t *Trainer) Model() *model.Model { return t.m }

// Optimizer exposes the AdamW state (moments) for checkpointing.
func (t *Trainer) Optimizer() *optim.AdamW { return t.opt }

// Config is the job configuration the trainer was built with.
func (t *Trainer) Config() JobConfig { return t.cfg }

// LR is the learning rate the next OptimizerStep will use.
func (t *Trainer) LR() float64 { return t.sched.LR(t.step) }

// OptimizerStep clips the gradient to optim.clip_norm (if set), applies AdamW
// with the schedule's learning rate and advances Step. It returns the global
// gradient norm before clipping. Without clipping the norm comes from the
// update's own pass over the gradient (one pass instead of two).
func (t *Trainer) OptimizerStep() (gradNorm float64) {
	if t.gpu != nil {
		n, err := t.gpuOptimizerStep()
		if err != nil {
			t.log.Error().Err(err).Msg("optimizer step")
			if t.gpu.err == nil {
				t.gpu.err = fmt.Errorf("train: step %d: optimizer on the GPU: %w", t.step+1, err)
			}
			return math.NaN()
		}
		return n
	}
	scale := 1.0
	clip := t.cfg.Optim.ClipNorm > 0
	if clip {
		gradNorm = optim.GlobalNorm(t.m.Grads)
		scale = optim.ClipScale(gradNorm, t.cfg.Optim.ClipNorm)
	}
	// Update fails only for a range outside the buffers, which NewTrainer
	// rules out.
	sumSq, err := t.opt.Update(t.m.Params, t.m.Grads, t.step+1, t.sched.LR(t.step), scale)
	if err != nil {
		t.log.Error().Err(err).Msg("optimizer step")
	}
	if !clip {
		gradNorm = math.Sqrt(sumSq)
	}
	t.step++
	return gradNorm
}

// Step is the number of optimizer steps taken.
func (t *Trainer) Step() int { return t.step }

// SetStep sets the step counter (resume from a checkpoint: the schedule and
// AdamW's bias correction continue from it).
func (t *Trainer) SetStep(step int) { t.step = step }

// Evaluate returns the mean cross-entropy over every non-ignored target of
// batches (no gradients, parameters unchanged).
func (t *Trainer) Evaluate(batches []sampling.Batch) (float64, error) {
	var ce ceMean
	for i, b := range batches {
		forward := t.m.Forward
		if t.gpu != nil {
			forward = t.gpu.m.Forward
			if p := t.gpu.dev.Ops.Prof; p != nil { // validation is not training time
				t.gpu.dev.Ops.Prof = nil
				defer func() { t.gpu.dev.Ops.Prof = p }()
			}
		}
		r, err := forward(toInput(b), false)
		if err != nil {
			return 0, fmt.Errorf("train: evaluate batch %d: %w", i, err)
		}
		ce.add(r)
	}
	return ce.mean(len(batches))
}

// ceMean is a mean cross-entropy over batches, each weighted by its counted
// targets.
type ceMean struct {
	sum   float64
	count int
}

func (m *ceMean) add(r model.Result) {
	m.sum += r.CE * float64(r.Targets)
	m.count += r.Targets
}

// mean is the weighted mean of n batches; an error when none counted a
// target.
func (m ceMean) mean(n int) (float64, error) {
	if m.count == 0 {
		return 0, fmt.Errorf("train: evaluate: %d batches hold no targets", n)
	}
	return m.sum / float64(m.count), nil
}

// SetGradsReadyHook installs fn as the model's backward hook (see
// model.Model.OnGradsReady); nil removes it. A data-parallel reducer uses it
// to start each gradient bucket's reduction while the backward continues.
func (t *Trainer) SetGradsReadyHook(fn func(lo, hi int)) { t.m.OnGradsReady = fn }

// NewShardOptimizers builds zeroed AdamW states, with the job's optimizer
// settings, over each range [r[0], r[1]) of the flat buffer: the shards of
// the optimizer state this rank owns under ZeRO-1. Step them with
// OptimizerStepShards, and checkpoint them with SnapshotWith/RestoreWith.
func (t *Trainer) NewShardOptimizers(ranges [][2]int) ([]*optim.AdamW, error) {
	out := make([]*optim.AdamW, 0, len(ranges))
	for i, r := range ranges {
		if r[1] > t.m.Layout.Total {
			return nil, fmt.Errorf("train: optimizer shard %d [%d, %d) beyond the %d parameters", i, r[0], r[1], t.m.Layout.Total)
		}
		o, err := optim.NewAdamW(t.cfg.Optim, r[0], r[1])
		if err != nil {
			return nil, fmt.Errorf("train: optimizer shard %d: %w", i, err)
		}
		out = append(out, o)
	}
	return out, nil
}

// OptimizerStepShards applies AdamW step Step()+1 with the schedule's
// learning rate and gradScale (the caller's clipping factor, computed from
// the global gradient norm) to each shard optimizer's range of Params, using
// the same range of Grads, then advances Step. Parameters outside the shards
// are untouched (ZeRO-1 all-gathers them afterwards). It returns Σ g² over
// the shards (before gradScale).
func (t *Trainer) OptimizerStepShards(shards []*optim.AdamW, gradScale float64) (sumSq float64, err error) {
	lr := t.sched.LR(t.step)
	for i, o := range shards {
		s, err := o.Update(t.m.Params, t.m.Grads, t.step+1, lr, gradScale)
		if err != nil {
			return 0, fmt.Errorf("train: step %d: optimizer shard %d: %w", t.step+1, i, err)
		}
		sumSq += s
	}
	t.step++
	return sumSq, nil
}
