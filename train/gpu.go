package train

import (
	"fmt"
	"math"

	"github.com/moetrain/moetrain/gpu"
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
}

// openGPU puts t's model and optimizer on GPU cfg.Train.GPU.
func (t *Trainer) openGPU() error {
	if t.cfg.Train.Precision == PrecisionBF16 {
		return fmt.Errorf("train: train.precision = %q on the GPU is not implemented yet (use \"fp32\")", t.cfg.Train.Precision)
	}
	dev, err := gpu.Open(t.cfg.Train.GPU)
	if err != nil {
		return fmt.Errorf("train: train.device = \"cuda\": %w", err)
	}
	m, err := gpu.NewFromHost(dev, t.m)
	if err != nil {
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
	t.log.Info().Str("gpu", dev.String()).Msg("training on the GPU")
	return nil
}

// Close releases the trainer's GPU resources (a no-op on the CPU).
func (t *Trainer) Close() error {
	if t.gpu == nil {
		return nil
	}
	t.gpu.opt.Close()
	t.gpu.m.Close()
	err := t.gpu.dev.Close()
	t.gpu = nil
	return err
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

// syncToDevice copies the host mirrors (just restored) to the device.
func (t *Trainer) syncToDevice() error {
	g := t.gpu
	if g == nil {
		return nil
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
	sumSq, err := g.opt.Update(g.m.ParamsPtr(), g.m.GradsPtr(), t.step+1, t.sched.LR(t.step), scale)
	if err != nil {
		return 0, err
	}
	if !clip {
		gradNorm = math.Sqrt(sumSq)
	}
	g.hostStale = true
	t.step++
	return gradNorm, nil
}
