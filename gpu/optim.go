package gpu

import (
	"fmt"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/gpu/ops"
	"github.com/moetrain/moetrain/optim"
)

// AdamW is optim.AdamW over a whole flat buffer on the device: fp32 moments
// in model.Layout order, the same element math, and Σg² in a fixed order.
type AdamW struct {
	cfg     optim.Config
	dev     *Device
	n       int
	mem     arena
	m, v    cuda.DevicePtr
	scratch cuda.DevicePtr
	sum     cuda.DevicePtr // float64: Σg² of the last update or norm
	// partial holds one Σg² per range of an update queued range by range
	// (updateRange), slots allocated on first use.
	partial      cuda.DevicePtr
	partialSlots int
}

// NewAdamW allocates zeroed moments for n parameters.
func NewAdamW(dev *Device, cfg optim.Config, n int) (*AdamW, error) {
	a := &AdamW{cfg: cfg, dev: dev, n: n}
	a.mem.d = dev
	a.m, a.v = a.mem.f32(n), a.mem.f32(n)
	a.scratch = a.mem.f32(ops.AdamWScratch(n))
	a.sum = a.mem.f64(1)
	if a.mem.err != nil {
		a.mem.free()
		return nil, fmt.Errorf("gpu: optimizer state of %d parameters: %w", n, a.mem.err)
	}
	s := dev.Ops.S
	if err := dev.C.Zero(s, a.m, 4*n); err != nil {
		a.mem.free()
		return nil, err
	}
	if err := dev.C.Zero(s, a.v, 4*n); err != nil {
		a.mem.free()
		return nil, err
	}
	return a, nil
}

// Close frees the moments.
func (a *AdamW) Close() {
	if a.partial != 0 {
		a.dev.free(a.partial, 8*a.partialSlots)
		a.partial, a.partialSlots = 0, 0
	}
	a.mem.free()
}

// Update applies AdamW step t (1-based) with learning rate lr to params
// using grads·gradScale, and returns Σg² before gradScale (as
// optim.AdamW.Update). It waits for the device to read the sum. A model's
// parameters are better updated through Model.Update, which also refreshes
// its bf16 weight copy in the same pass.
func (a *AdamW) Update(params, grads cuda.DevicePtr, t int, lr, gradScale float64) (float64, error) {
	return a.update(params, 0, grads, t, lr, gradScale)
}

// update is Update that also writes the parameters rounded to bf16 into
// p16 when it is not 0.
func (a *AdamW) update(params, p16, grads cuda.DevicePtr, t int, lr, gradScale float64) (float64, error) {
	st := ops.AdamWStep{Beta1: a.cfg.Beta1, Beta2: a.cfg.Beta2, Eps: a.cfg.Eps, WeightDecay: a.cfg.WeightDecay,
		T: t, LR: lr, GradScale: gradScale, P16: p16}
	if err := a.dev.Ops.AdamWUpdate(params, grads, a.m, a.v, 0, a.n, st, a.scratch, a.sum); err != nil {
		return 0, err
	}
	var s [1]float64
	err := cuda.CopyOut(a.dev.C, s[:], a.sum)
	return s[0], err
}

// ensurePartials makes room for n per-range sums (allocated once, before a
// step: an allocation waits for the device).
func (a *AdamW) ensurePartials(n int) error {
	if n <= a.partialSlots {
		return nil
	}
	if a.partial != 0 {
		a.dev.free(a.partial, 8*a.partialSlots)
		a.partial, a.partialSlots = 0, 0
	}
	p, err := a.dev.alloc(8 * n)
	if err != nil {
		return fmt.Errorf("gpu: optimizer partial sums: %w", err)
	}
	a.partial, a.partialSlots = p, n
	return nil
}

// updateRange queues AdamW step t on params[lo:hi] (and its bf16 copy at
// p16 when not 0) on lane l, writing the range's Σg² to partial slot slot.
// The lane's launches run in order, so every range shares one scratch.
func (a *AdamW) updateRange(l *lane, params, p16, grads cuda.DevicePtr, lo, hi, slot, t int, lr float64) error {
	if slot >= a.partialSlots {
		return fmt.Errorf("gpu: optimizer range %d beyond %d partial sums", slot, a.partialSlots)
	}
	st := ops.AdamWStep{Beta1: a.cfg.Beta1, Beta2: a.cfg.Beta2, Eps: a.cfg.Eps, WeightDecay: a.cfg.WeightDecay,
		T: t, LR: lr, GradScale: 1, P16: p16}
	run := func() error {
		return l.o.AdamWUpdate(params, grads, a.m.Add(4*lo), a.v.Add(4*lo), lo, hi, st, a.scratch, a.partial.Add(8*slot))
	}
	if p := a.dev.Ops.Prof; p != nil {
		return p.SpanOn(l.s, "optimizer", "adamw_update_f32 (beside the backward)", run)
	}
	return run()
}

// GradNorm is the L2 norm of grads (n floats), as optim.GlobalNorm.
func (a *AdamW) GradNorm(grads cuda.DevicePtr) (float64, error) {
	if err := a.dev.Ops.GlobalNorm(grads, a.n, a.scratch, a.sum); err != nil {
		return 0, err
	}
	var s [1]float64
	err := cuda.CopyOut(a.dev.C, s[:], a.sum)
	return s[0], err
}

// Moments copies the moments to the host (n floats each).
func (a *AdamW) Moments(m, v []float32) error {
	if len(m) != a.n || len(v) != a.n {
		return fmt.Errorf("gpu: moments of %d and %d floats for %d parameters", len(m), len(v), a.n)
	}
	if err := cuda.CopyOut(a.dev.C, m, a.m); err != nil {
		return err
	}
	return cuda.CopyOut(a.dev.C, v, a.v)
}

// SetMoments copies host moments (n floats each) to the device.
func (a *AdamW) SetMoments(m, v []float32) error {
	if len(m) != a.n || len(v) != a.n {
		return fmt.Errorf("gpu: moments of %d and %d floats for %d parameters", len(m), len(v), a.n)
	}
	if err := cuda.CopyIn(a.dev.C, a.m, m); err != nil {
		return err
	}
	return cuda.CopyIn(a.dev.C, a.v, v)
}
