package ops

import (
	"math"

	"github.com/moetrain/moetrain/cuda"
)

// Elementwise kernels (cuda/kernels/elementwise.cu): tensor.AddInPlace,
// tensor.Scale, tensor.SumSquares and the f32<->bf16 casts. Flat lengths are
// passed to the kernels as 64-bit, so buffers may exceed 2^31 elements.

// elementwiseChunk is the number of elements whose sum of squares one block
// reduces (ELEMENTWISE_CHUNK in elementwise.cu, ADAMW_CHUNK in adamw.cu).
// The partition depends only on n, so device sums are bitwise reproducible.
const elementwiseChunk = 8192

// elementwiseReduceBlock is the block size of the fixed-order reductions;
// changing it changes the order of the additions (still deterministic).
const elementwiseReduceBlock = 256

// elementwiseRowBlock is the block size of the one-block-per-row kernels for
// rows of d elements: one thread per 4-element chunk up to 256 threads, at
// least a warp.
func elementwiseRowBlock(d int) int {
	t := ((d+3)/4 + 31) / 32 * 32
	return min(256, max(32, t))
}

// elementwiseGrid is the grid of the grid-stride elementwise kernels over n
// elements taken 4 at a time.
func (o *Ops) elementwiseGrid(n int) int { return o.gridFor((n+3)/4, 256) }

// elementwiseCheck reports a negative length or, for n > 0, a null buffer.
func elementwiseCheck(op string, n int, ptrs ...cuda.DevicePtr) error {
	if n < 0 {
		return errf(op, "length %d", n)
	}
	if n == 0 {
		return nil
	}
	for i, p := range ptrs {
		if p == 0 {
			return errf(op, "buffer %d is null", i)
		}
	}
	return nil
}

// elementwiseCheck64 reports a float64 result or scratch buffer that is null
// or not 8-byte aligned.
func elementwiseCheck64(op, what string, p cuda.DevicePtr) error {
	if p == 0 || p%8 != 0 {
		return errf(op, "%s buffer %#x must be non-null and 8-byte aligned", what, uintptr(p))
	}
	return nil
}

// AddInPlace sets dst += src over n floats (tensor.AddInPlace).
func (o *Ops) AddInPlace(dst, src cuda.DevicePtr, n int) error {
	if err := elementwiseCheck("AddInPlace", n, dst, src); err != nil || n == 0 {
		return err
	}
	return o.launch("elementwise_add_f32", o.elementwiseGrid(n), 256, 0, dst, src, int64(n))
}

// Scale sets x *= alpha over n floats (tensor.Scale).
func (o *Ops) Scale(x cuda.DevicePtr, alpha float32, n int) error {
	if err := elementwiseCheck("Scale", n, x); err != nil || n == 0 {
		return err
	}
	return o.launch("elementwise_scale_f32", o.elementwiseGrid(n), 256, 0, x, alpha, int64(n))
}

// SumSquaresScratch is the scratch, in floats (two per float64 partial sum),
// that SumSquares, GlobalNorm and AdamWUpdate need for n elements.
func SumSquaresScratch(n int) int { return 2 * ((max(n, 0) + elementwiseChunk - 1) / elementwiseChunk) }

// SumSquares writes Σ x[i]² over n floats, accumulated in float64 in a fixed
// order (bitwise reproducible), to out: one float64 on the device, which the
// host reads when it needs it (n = 0 writes 0). scratch holds
// SumSquaresScratch(n) floats, 8-byte aligned.
func (o *Ops) SumSquares(x cuda.DevicePtr, n int, scratch, out cuda.DevicePtr) error {
	return o.sumSquares("SumSquares", x, n, scratch, out, 0)
}

// sumSquares is SumSquares writing the square root when root is 1.
func (o *Ops) sumSquares(op string, x cuda.DevicePtr, n int, scratch, out cuda.DevicePtr, root int) error {
	if err := elementwiseCheck(op, n, x); err != nil {
		return err
	}
	if err := elementwiseCheck64(op, "out", out); err != nil {
		return err
	}
	nb := (n + elementwiseChunk - 1) / elementwiseChunk
	if nb > 0 {
		if err := elementwiseCheck64(op, "scratch", scratch); err != nil {
			return err
		}
		if err := o.launch("elementwise_sumsq_f32", nb, elementwiseReduceBlock, 0, scratch, x, int64(n)); err != nil {
			return err
		}
	}
	return o.launch("elementwise_sum_f64", 1, 1024, 0, out, scratch, nb, root)
}

// CastF32ToBF16 sets dst[i] = bf16(src[i]) for i < n, rounding to nearest
// even; dst holds n bf16 values.
func (o *Ops) CastF32ToBF16(dst, src cuda.DevicePtr, n int) error {
	if err := elementwiseCheck("CastF32ToBF16", n, dst, src); err != nil || n == 0 {
		return err
	}
	return o.launch("cast_f32_to_bf16", o.elementwiseGrid(n), 256, 0, dst, src, int64(n))
}

// CastBF16ToF32 sets dst[i] = float32(src[i]) for i < n (exact).
func (o *Ops) CastBF16ToF32(dst, src cuda.DevicePtr, n int) error {
	if err := elementwiseCheck("CastBF16ToF32", n, dst, src); err != nil || n == 0 {
		return err
	}
	return o.launch("cast_bf16_to_f32", o.elementwiseGrid(n), 256, 0, dst, src, int64(n))
}

// elementwiseF64 is v's bits, how a float64 kernel parameter is passed
// (cuda.Context.Launch takes no float64; the sizes match).
func elementwiseF64(v float64) uint64 { return math.Float64bits(v) }
