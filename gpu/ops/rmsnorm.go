package ops

import "github.com/moetrain/moetrain/cuda"

// RMSNorm (cuda/kernels/rmsnorm.cu, tensor/rmsnorm.go). The BF16 variants
// take bf16 activations (forward in and out, backward in); weight, rstd and
// gradients are float32.

// rmsnormRows is the rows per block of the backward (RMSNORM_ROWS in
// rmsnorm.cu): each block writes one row of dweight partial sums.
const rmsnormRows = 32

// rmsnormMaxD is the widest row whose backward dweight partial (d floats of
// dynamic shared memory) fits, with the kernel's 256 static bytes, in the 48
// KiB a block gets without opting in.
const rmsnormMaxD = (48<<10 - 256) / 4

// RMSNormForward sets, for n rows of width d, rstd[i] = 1/sqrt(mean_j
// in[i,j]² + eps) (the mean in float64) and out[i,j] = in[i,j]·rstd[i]·w[j]
// (tensor.RMSNormForward). out must not alias in.
func (o *Ops) RMSNormForward(out, rstd, in, w cuda.DevicePtr, n, d int, eps float32) error {
	return o.rmsnormForward("RMSNormForward", "rmsnorm_fwd_f32", out, rstd, in, w, n, d, eps)
}

// RMSNormForwardBF16 is RMSNormForward with bf16 in and out.
func (o *Ops) RMSNormForwardBF16(out, rstd, in, w cuda.DevicePtr, n, d int, eps float32) error {
	return o.rmsnormForward("RMSNormForwardBF16", "rmsnorm_fwd_bf16", out, rstd, in, w, n, d, eps)
}

// RMSNormForwardF32BF16 is RMSNormForward with fp32 in and bf16 out (the
// norm of the fp32 residual stream feeding a bf16 product).
func (o *Ops) RMSNormForwardF32BF16(out, rstd, in, w cuda.DevicePtr, n, d int, eps float32) error {
	return o.rmsnormForward("RMSNormForwardF32BF16", "rmsnorm_fwd_f32_bf16", out, rstd, in, w, n, d, eps)
}

func (o *Ops) rmsnormForward(op, kernel string, out, rstd, in, w cuda.DevicePtr, n, d int, eps float32) error {
	if n < 0 || d < 1 {
		return errf(op, "n=%d d=%d", n, d)
	}
	if err := elementwiseCheck(op, n, out, rstd, in, w); err != nil || n == 0 {
		return err
	}
	return o.launch(kernel, n, elementwiseRowBlock(d), 0, out, rstd, in, w, n, d, eps)
}

// RMSNormBackwardScratch is the scratch, in floats, RMSNormBackward needs
// for n rows of width d when it computes dweight.
func RMSNormBackwardScratch(n, d int) int {
	return (max(n, 0) + rmsnormRows - 1) / rmsnormRows * max(d, 0)
}

// RMSNormBackward ACCUMULATES, for n rows of width d (tensor.RMSNormBackward):
//
//	din[i,j]   += r·(dout[i,j]·w[j] − in[i,j]·r²·(Σ_k dout[i,k]·w[k]·in[i,k])/d),  r = rstd[i]
//	dweight[j] += Σ_i dout[i,j]·in[i,j]·r
//
// dweight may be 0 (not computed); otherwise scratch holds
// RMSNormBackwardScratch(n, d) floats and d is at most 12224. dweight is
// summed over fixed blocks of 32 rows, then over the blocks in order, so it
// is bitwise reproducible (not bitwise the CPU's row-order sum). din must
// not alias dout or in.
func (o *Ops) RMSNormBackward(din, dweight, dout, in, w, rstd, scratch cuda.DevicePtr, n, d int) error {
	return o.rmsnormBackward("RMSNormBackward", "rmsnorm_bwd_f32", din, dweight, dout, in, w, rstd, scratch, n, d)
}

// RMSNormBackwardBF16 is RMSNormBackward with a bf16 in.
func (o *Ops) RMSNormBackwardBF16(din, dweight, dout, in, w, rstd, scratch cuda.DevicePtr, n, d int) error {
	return o.rmsnormBackward("RMSNormBackwardBF16", "rmsnorm_bwd_bf16", din, dweight, dout, in, w, rstd, scratch, n, d)
}

func (o *Ops) rmsnormBackward(op, kernel string, din, dweight, dout, in, w, rstd, scratch cuda.DevicePtr, n, d int) error {
	if n < 0 || d < 1 {
		return errf(op, "n=%d d=%d", n, d)
	}
	if err := elementwiseCheck(op, n, din, dout, in, w, rstd); err != nil || n == 0 {
		return err
	}
	nb := (n + rmsnormRows - 1) / rmsnormRows
	shared := 0
	if dweight != 0 {
		if d > rmsnormMaxD {
			return errf(op, "d=%d above %d with dweight", d, rmsnormMaxD)
		}
		if scratch == 0 || scratch%4 != 0 {
			return errf(op, "scratch of %d floats must be non-null and 4-byte aligned", RMSNormBackwardScratch(n, d))
		}
		shared = 4 * d
	} else {
		scratch = 0
	}
	if err := o.launch(kernel, nb, elementwiseRowBlock(d), shared, din, scratch, dout, in, w, rstd, n, d); err != nil || dweight == 0 {
		return err
	}
	return o.launch3("rmsnorm_dweight_reduce", cuda.Dim3{X: (d + 31) / 32}, cuda.Dim3{X: 32, Y: 8}, 0, dweight, scratch, nb, d)
}
