package ops

import (
	"math"

	"github.com/moetrain/moetrain/cuda"
)

// AdamW and gradient clipping (cuda/kernels/adamw.cu, optim/adamw.go,
// optim/clip.go).

// AdamWStep is one AdamW step: optim.AdamW's hyperparameters and the
// arguments of its Update.
type AdamWStep struct {
	Beta1, Beta2, Eps, WeightDecay float64
	// T is the step number, 1-based (bias correction).
	T int
	// LR is the learning rate; GradScale multiplies the gradient.
	LR, GradScale float64
	// ClipNorm, when non-zero and MaxNorm > 0, is a float64 on the device
	// holding the gradient's L2 norm (GlobalNorm's out): the kernel
	// multiplies GradScale by optim.ClipScale(norm, MaxNorm), so clipping
	// needs no host round trip between GlobalNorm and the update.
	ClipNorm cuda.DevicePtr
	MaxNorm  float64
	// P16, when non-zero, is a bf16 copy of the whole parameter buffer
	// (indexed like params) that the update refreshes in the same pass:
	// the mixed-precision weights.
	P16 cuda.DevicePtr
}

// AdamWScratch is the scratch, in floats, AdamWUpdate needs for a range of n
// elements when it returns Σg² (the same as SumSquaresScratch).
func AdamWScratch(n int) int { return SumSquaresScratch(n) }

// AdamWUpdate applies one AdamW step to params[lo:hi] with grads[lo:hi],
// like optim.AdamW.Update: m and v are the moments of the range (indexed
// from lo), updated in place, and the element math is the CPU's operation
// for operation (bitwise the same on amd64). With sumSq non-zero it also
// writes Σ g² over the range (before GradScale, in float64, in a fixed
// order) to sumSq, one float64 on the device that the host reads once per
// step; scratch then holds AdamWScratch(hi-lo) floats. sumSq and scratch
// must be 8-byte aligned. The float4 path needs params+lo, grads+lo, m and v
// 16-byte aligned (lo a multiple of 4 for 16-byte aligned buffers); other
// ranges run a scalar path.
func (o *Ops) AdamWUpdate(params, grads, m, v cuda.DevicePtr, lo, hi int, s AdamWStep, scratch, sumSq cuda.DevicePtr) error {
	const op = "AdamWUpdate"
	if lo < 0 || hi < lo {
		return errf(op, "bad range [%d, %d)", lo, hi)
	}
	if s.T < 1 {
		return errf(op, "step number %d, want >= 1", s.T)
	}
	n := hi - lo
	if err := elementwiseCheck(op, n, params, grads, m, v); err != nil {
		return err
	}
	nb := (n + elementwiseChunk - 1) / elementwiseChunk
	if sumSq != 0 {
		if err := elementwiseCheck64(op, "sumSq", sumSq); err != nil {
			return err
		}
		if nb > 0 {
			if err := elementwiseCheck64(op, "scratch", scratch); err != nil {
				return err
			}
		}
	} else {
		scratch = 0
	}
	if s.ClipNorm != 0 && s.ClipNorm%8 != 0 {
		return errf(op, "ClipNorm %#x is not 8-byte aligned", uintptr(s.ClipNorm))
	}
	if nb > 0 {
		// The host-side constants exactly as optim.AdamW.Update computes them.
		bc1 := 1 - math.Pow(s.Beta1, float64(s.T))
		bc2 := 1 - math.Pow(s.Beta2, float64(s.T))
		p16 := s.P16
		if p16 != 0 {
			p16 = p16.Add(2 * lo)
		}
		err := o.launch("adamw_update_f32", nb, elementwiseReduceBlock, 0,
			params.Add(4*lo), p16, grads.Add(4*lo), m, v, scratch, s.ClipNorm, int64(n),
			float32(s.Beta1), float32(s.Beta2), float32(1-s.Beta1), float32(1-s.Beta2),
			float32(1-s.LR*s.WeightDecay), float32(s.LR/bc1), float32(1/math.Sqrt(bc2)), float32(s.Eps),
			elementwiseF64(s.GradScale), elementwiseF64(s.MaxNorm))
		if err != nil {
			return err
		}
	}
	if sumSq == 0 {
		return nil
	}
	return o.launch("elementwise_sum_f64", 1, 1024, 0, sumSq, scratch, nb, 0)
}

// GlobalNorm writes the L2 norm of n floats of grads (optim.GlobalNorm),
// summed in float64 in a fixed order, to out: one float64 on the device,
// 8-byte aligned, which AdamWStep.ClipNorm can point at. scratch holds
// SumSquaresScratch(n) floats. Sharded callers use SumSquares per range,
// all-reduce, then take the root.
func (o *Ops) GlobalNorm(grads cuda.DevicePtr, n int, scratch, out cuda.DevicePtr) error {
	return o.sumSquares("GlobalNorm", grads, n, scratch, out, 1)
}
