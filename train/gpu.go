package train

import (
	"fmt"
	"github.com/moetrain/moetrain/sampling"
	"math"
	"time"

	"github.com/moetrain/moetrain/gpu"
	"github.com/moetrain/moetrain/gpu/ops"
	"github.com/moetrain/moetrain/optim"
)

// gpuState is a trainer's model and optimizer on a GPU (train.device =
// "cuda"). The CPU model's Params and the CPU optimizer's moments are then
// host mirrors: syncFromDevice fills them before a checkpoint reads them,
// syncToDevice copies them back after a restore overwrote them.
type gpuState struct {
	dev *gpu.Device
	m   *gpu.Model
	opt *gpu.AdamW
	// hostStale: the device has taken steps since the mirrors were filled.
	hostStale bool
	// prof (StartGPUProfile) times the steps by kernel family; profSteps
	// counts the optimizer steps taken since; profPlans and profPlanTime
	// are cuBLASLt's search counters when profiling started.
	prof         *ops.Profile
	profSteps    int
	profPlans    int
	profPlanTime time.Duration
	err          error // first failure of a call without an error result
}

// openGPU puts t's model and optimizer on GPU cfg.Train.GPU.
func (t *Trainer) openGPU() error {
	dev, err := gpu.Open(t.cfg.Train.GPU)
	if err != nil {
		return fmt.Errorf("train: train.device = \"cuda\": %w", err)
	}
	m, err := gpu.NewFromHost(dev, t.m)
	if err != nil {
		dev.Close()
		return fmt.Errorf("train: %w", err)
	}
	if err := m.SetPrecision(t.cfg.Train.Precision == PrecisionBF16); err != nil {
		m.Close()
		dev.Close()
		return fmt.Errorf("train: %w", err)
	}
	opt, err := gpu.NewAdamW(dev, t.cfg.Optim, t.m.Layout.Total)
	if err != nil {
		m.Close()
		dev.Close()
		return fmt.Errorf("train: %w", err)
	}
	t.gpu = &gpuState{dev: dev, m: m, opt: opt}
	t.log.Info().Str("gpu", dev.String()).Str("precision", m.Precision()).Msg("training on the GPU")
	return nil
}

// Close releases the trainer's GPU resources (a no-op on the CPU) after
// copying the device's parameters and moments to the host, so the trainer
// goes on as a CPU trainer from where the GPU left it.
func (t *Trainer) Close() error {
	if t.gpu == nil {
		return nil
	}
	syncErr := t.syncFromDevice()
	t.gpu.opt.Close()
	t.gpu.m.Close()
	err := t.gpu.dev.Close()
	t.gpu = nil
	if syncErr != nil {
		return syncErr
	}
	return err
}

// DeviceErr is the first error a GPU trainer met in a call that has no
// error result (OptimizerStep, Params); nil on the CPU. Run checks it after
// every step.
func (t *Trainer) DeviceErr() error {
	if t.gpu == nil {
		return nil
	}
	return t.gpu.err
}

// syncFromDevice copies the device's parameters and moments into the host
// mirrors when they are stale.
func (t *Trainer) syncFromDevice() error {
	g := t.gpu
	if g == nil || !g.hostStale {
		return nil
	}
	if err := g.m.Params(t.m.Params); err != nil {
		return fmt.Errorf("train: parameters from the GPU: %w", err)
	}
	if err := g.opt.Moments(t.opt.M, t.opt.V); err != nil {
		return fmt.Errorf("train: optimizer state from the GPU: %w", err)
	}
	g.hostStale = false
	return nil
}

// syncToDevice copies the host mirrors (just restored) to the device. It
// refuses while the mirrors are stale (the device took steps since they
// were filled): pushing them would silently undo those steps.
func (t *Trainer) syncToDevice() error {
	g := t.gpu
	if g == nil {
		return nil
	}
	if g.hostStale {
		return fmt.Errorf("train: host parameters are older than the GPU's (read them with Params after the last step before changing them)")
	}
	if err := g.m.SetParams(t.m.Params); err != nil {
		return fmt.Errorf("train: parameters to the GPU: %w", err)
	}
	if err := g.opt.SetMoments(t.opt.M, t.opt.V); err != nil {
		return fmt.Errorf("train: optimizer state to the GPU: %w", err)
	}
	g.hostStale = false
	return nil
}

// gpuTrainStep is TrainStep on the device without clipping: the model
// queues each parameter group's AdamW update beside the rest of the
// backward (gpu.Model.TrainStep).
func (t *Trainer) gpuTrainStep(b sampling.Batch) (StepStats, float64, error) {
	g := t.gpu
	ep := t.statsEP()
	g.hostStale = true // the device state moves from here on
	r, sumSq, err := g.m.TrainStep(toInput(b), g.opt, t.step+1, t.sched.LR(t.step))
	if err != nil {
		return StepStats{}, 0, fmt.Errorf("train: step %d: %w", t.step+1, err)
	}
	stats, err := g.m.RouterStats(ep)
	if err != nil {
		return StepStats{}, 0, fmt.Errorf("train: step %d: router stats: %w", t.step+1, err)
	}
	t.step++
	t.collectGPUProfile()
	return StepStats{
		Loss: r.Loss, CE: r.CE, Aux: r.Aux, ZLoss: r.ZLoss, Tokens: b.B * b.T, Targets: r.Targets,
		RoutedLoad: g.m.RoutedLoad(), Router: stats,
	}, math.Sqrt(sumSq), nil
}

// collectGPUProfile adds a finished step to the profile, if one runs.
func (t *Trainer) collectGPUProfile() {
	g := t.gpu
	if g.prof == nil {
		return
	}
	g.profSteps++
	if err := g.prof.Collect(); err != nil { // the step itself went through
		t.log.Warn().Err(err).Msg("GPU profile: stopped")
		g.prof, g.dev.Ops.Prof = nil, nil
	}
}

// gpuOptimizerStep is OptimizerStep on the device.
func (t *Trainer) gpuOptimizerStep() (gradNorm float64, err error) {
	g := t.gpu
	scale := 1.0
	clip := t.cfg.Optim.ClipNorm > 0
	if clip {
		if gradNorm, err = g.opt.GradNorm(g.m.GradsPtr()); err != nil {
			return 0, err
		}
		scale = optim.ClipScale(gradNorm, t.cfg.Optim.ClipNorm)
	}
	// The update rewrites the device state even if reading its Σg² back
	// fails: the mirrors are stale from here on.
	g.hostStale = true
	sumSq, err := g.m.Update(g.opt, t.step+1, t.sched.LR(t.step), scale)
	if err != nil {
		return 0, err
	}
	if !clip {
		gradNorm = math.Sqrt(sumSq)
	}
	t.step++
	t.collectGPUProfile()
	return gradNorm, nil
}

// GPUStats are a GPU trainer's memory figures and, when profiling, the time
// per kernel family.
type GPUStats struct {
	// PeakAllocated is the most device memory the model, activations and
	// optimizer held at once (what PyTorch calls max_memory_allocated);
	// InUse is what the device reports in use now (the context and
	// cuBLASLt's workspace included).
	PeakAllocated, InUse int64
	// FamilyMS is milliseconds per profiled step by kernel family ("gemm",
	// "attention", "routing", "elementwise", "optimizer", "spsa"); Steps counts the
	// profiled steps.
	FamilyMS map[string]float64
	Steps    int
	// TopKernels are the kernels with the most time, as "name ms".
	TopKernels []string
	// WallMS is the device's span per profiled step, from its first launch
	// to the end of its last (WallMS minus the families' sum is the time the
	// device waited for the host); GemmPlans and GemmPlanMS are cuBLASLt
	// algorithm searches per step and the host time they took.
	WallMS, GemmPlans, GemmPlanMS float64
}

// StartGPUProfile times every following step's device work by kernel
// family (event pairs around each launch: a few microseconds each).
func (t *Trainer) StartGPUProfile() {
	if t.gpu != nil && t.gpu.prof == nil {
		t.gpu.prof = t.gpu.dev.Ops.NewProfile()
		t.gpu.profPlans, t.gpu.profPlanTime = t.gpu.dev.Blas.PlansMade, t.gpu.dev.Blas.PlanTime
	}
}

// GPUStats reports the GPU's figures; ok is false on the CPU.
func (t *Trainer) GPUStats() (s GPUStats, ok bool) {
	g := t.gpu
	if g == nil {
		return s, false
	}
	_, s.PeakAllocated = g.dev.Allocated()
	if free, total, err := g.dev.C.MemInfo(); err == nil {
		s.InUse = total - free
	}
	if g.prof != nil {
		if err := g.prof.Collect(); err == nil && g.profSteps > 0 {
			s.FamilyMS = map[string]float64{}
			for f, ms := range g.prof.Totals {
				s.FamilyMS[f] = ms / float64(g.profSteps)
			}
			steps := float64(g.profSteps)
			s.WallMS = g.prof.Wall / steps
			s.GemmPlans = float64(g.dev.Blas.PlansMade-g.profPlans) / steps
			s.GemmPlanMS = float64((g.dev.Blas.PlanTime - g.profPlanTime).Microseconds()) / 1e3 / steps
			for _, k := range g.prof.Top(24) {
				s.TopKernels = append(s.TopKernels, fmt.Sprintf("%s %.2f", k, g.prof.Kernels[k]/float64(g.profSteps)))
			}
			s.Steps = g.profSteps
		}
	}
	return s, true
}
