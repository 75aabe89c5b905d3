package ops

import "github.com/moetrain/moetrain/cuda"

// Exact-erf GELU (cuda/kernels/gelu.cu, tensor/gelu.go). The BF16 variants
// take bf16 activations (forward in and out, backward in) and compute in
// float32; gradients stay float32.

// GELUForward sets out[i] = in[i]·Φ(in[i]) for i < n (tensor.GELUForward).
// out may alias in.
func (o *Ops) GELUForward(out, in cuda.DevicePtr, n int) error {
	return o.geluForward("GELUForward", "gelu_fwd_f32", out, in, n)
}

// GELUForwardBF16 is GELUForward on bf16 in and out.
func (o *Ops) GELUForwardBF16(out, in cuda.DevicePtr, n int) error {
	return o.geluForward("GELUForwardBF16", "gelu_fwd_bf16", out, in, n)
}

func (o *Ops) geluForward(op, kernel string, out, in cuda.DevicePtr, n int) error {
	if err := elementwiseCheck(op, n, out, in); err != nil || n == 0 {
		return err
	}
	return o.launch(kernel, o.elementwiseGrid(n), 256, 0, out, in, int64(n))
}

// GELUBackward ACCUMULATES din[i] += dout[i]·(Φ(x) + x·φ(x)), x = in[i], for
// i < n, like tensor.GELUBackward.
func (o *Ops) GELUBackward(din, dout, in cuda.DevicePtr, n int) error {
	return o.geluBackward("GELUBackward", "gelu_bwd_f32", din, dout, in, n)
}

// GELUBackwardBF16 is GELUBackward with a bf16 in (din and dout float32).
func (o *Ops) GELUBackwardBF16(din, dout, in cuda.DevicePtr, n int) error {
	return o.geluBackward("GELUBackwardBF16", "gelu_bwd_bf16", din, dout, in, n)
}

func (o *Ops) geluBackward(op, kernel string, din, dout, in cuda.DevicePtr, n int) error {
	if err := elementwiseCheck(op, n, din, dout, in); err != nil || n == 0 {
		return err
	}
	return o.launch(kernel, o.elementwiseGrid(n), 256, 0, din, dout, in, int64(n))
}

// GELUBackwardBF16Out OVERWRITES din = bf16(dout·GELU'(in)) over n bf16
// elements (dout, in and din all bf16): the mixed-precision expert backward,
// whose products read the bf16 gradient directly.
func (o *Ops) GELUBackwardBF16Out(din, dout, in cuda.DevicePtr, n int) error {
	return o.geluBackward("GELUBackwardBF16Out", "gelu_bwd_bf16_bf16", din, dout, in, n)
}
