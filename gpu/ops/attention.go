package ops

import (
	"math"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/tensor"
)

// Attention kernels (cuda/kernels/attention.cu, fp32, 64×64 query × key
// tiles; attention_bf16.cu, tensor cores, 128-row blocks over 64-row tiles):
// one kernel variant per head-size bound DMAX (32, 64, 128; the head size is
// rounded up to one of them, so each kernel name always launches with the
// same shared memory and launch3's one-time opt-in above 48 KiB holds). Semantics and layouts are
// tensor.AttnShape's: the same masks (causal with QPos0/KPos0, segments),
// lse and d [(b·Heads + h)·Tq + t], rows with no visible key get o = 0 and
// lse = -Inf, and the backward adds into dq, dk, dv.
const (
	attnTile    = 64
	attnThreads = 256
	attnMaxDim  = 128
	attnLdP     = attnTile + 4 // row stride of the kernels' score tile
)

// attnDMax is the kernel variant for head size d (0 if none).
func attnDMax(d int) int {
	switch {
	case d <= 32:
		return 32
	case d <= 64:
		return 64
	case d <= attnMaxDim:
		return 128
	}
	return 0
}

// Kernel names by DMAX, so launches do not format strings.
var (
	attnFwdName = map[int]string{32: "attention_fwd_f32_d32", 64: "attention_fwd_f32_d64", 128: "attention_fwd_f32_d128"}
	attnDKVName = map[int]string{32: "attention_bwd_dkv_f32_d32", 64: "attention_bwd_dkv_f32_d64", 128: "attention_bwd_dkv_f32_d128"}
	attnDQName  = map[int]string{32: "attention_bwd_dq_f32_d32", 64: "attention_bwd_dq_f32_d64", 128: "attention_bwd_dq_f32_d128"}
)

// attnF32 is the fp32 kernel set.
var attnF32 = attnKernels{
	fwd: attnFwdName, dkv: attnDKVName, dq: attnDQName, grid: attnGrid, threads: attnThreads,
	fwdShared: attnFwdShared, dkvShared: attnBwdShared, dqShared: attnBwdShared, rowDot: "attention_rowdot_f32",
}

// attnFwdShared is the forward's dynamic shared memory: Q and K/V tiles
// [64][DMAX+4], the P tile [64][68], key segment ids [64].
func attnFwdShared(dmax int) int { return 4 * (2*attnTile*(dmax+4) + attnTile*attnLdP + attnTile) }

// attnBwdShared is either backward kernel's: Q, dO, K, V tiles, the P/dS
// tile, and lse, d, query and key segment ids [64] each.
func attnBwdShared(dmax int) int { return 4 * (4*attnTile*(dmax+4) + attnTile*attnLdP + 4*attnTile) }

// attnGrid is the fp32 kernels' grid over t rows: (ceil(t/64), Heads, Batch).
func attnGrid(t int, s tensor.AttnShape) cuda.Dim3 {
	return cuda.Dim3{X: (t + attnTile - 1) / attnTile, Y: s.Heads, Z: s.Batch}
}

// attnArgs checks s for the GPU kernels and returns the kernel variant and
// the resolved scale. s.Validate runs with the buffer lengths the shape
// needs (device buffers carry no length: the caller vouches for them);
// the device segment arrays must be given exactly when s.QSeg, s.KSeg are
// (their contents are not read here); the grid's y and z (Heads, Batch)
// must fit the CUDA limit and the head size the kernels' bound.
func attnArgs(op string, s tensor.AttnShape, qseg, kseg cuda.DevicePtr) (dmax int, scale float32, err error) {
	w := s.Heads * s.HeadDim
	need := func(rows, stride int) int {
		if rows <= 0 {
			return 0
		}
		return (rows-1)*stride + w
	}
	if err := s.Validate(need(s.Batch*s.Tq, s.QStride), need(s.Batch*s.Tk, s.KStride),
		need(s.Batch*s.Tk, s.VStride), need(s.Batch*s.Tq, s.OStride)); err != nil {
		return 0, 0, errf(op, "%v", err)
	}
	if (s.QSeg != nil) != (qseg != 0) || (s.KSeg != nil) != (kseg != 0) {
		return 0, 0, errf(op, "device segment ids (qseg %#x, kseg %#x) must be given exactly when the shape has QSeg, KSeg", uintptr(qseg), uintptr(kseg))
	}
	if dmax = attnDMax(s.HeadDim); dmax == 0 {
		return 0, 0, errf(op, "HeadDim %d > %d", s.HeadDim, attnMaxDim)
	}
	if s.Heads > 65535 || s.Batch > 65535 {
		return 0, 0, errf(op, "Heads %d, Batch %d: each must be at most 65535 (grid y, z)", s.Heads, s.Batch)
	}
	const lim = math.MaxInt32
	if int64(s.Batch)*int64(max(s.Tq, s.Tk))*int64(s.Heads) > lim || s.Tq > lim || s.Tk > lim {
		return 0, 0, errf(op, "Batch·T·Heads too large for 32-bit indices")
	}
	scale = s.Scale
	if scale == 0 {
		scale = float32(1 / math.Sqrt(float64(s.HeadDim)))
	}
	return dmax, scale, nil
}

// attnShared checks that the GPU grants a kernel shared bytes.
func (o *Ops) attnShared(op string, shared int) error {
	if lim := o.C.Info().MaxSharedOptin; shared > lim {
		return errf(op, "needs %d bytes of shared memory per block, the GPU allows %d", shared, lim)
	}
	return nil
}

func attnBool(b bool) int {
	if b {
		return 1
	}
	return 0
}

// attnKernels is one precision's attention kernels: the forward, dK/dV and
// dQ kernels by DMAX, the grid over t rows, threads per block, each
// kernel's dynamic shared bytes and the kernel computing d. bf16 kernels
// take attnBF16Args' extra requirements, and with bf16Grads the backward
// writes bf16 gradients, which must then be aligned too.
type attnKernels struct {
	fwd, dkv, dq                   map[int]string
	grid                           func(t int, s tensor.AttnShape) cuda.Dim3
	threads                        int
	fwdShared, dkvShared, dqShared func(dmax int) int
	rowDot                         string
	bf16, bf16Grads                bool
}

// args checks the arguments for ks's kernels (attnArgs, or attnBF16Args
// with the bf16 buffers aligned) and returns the kernel variant and the
// resolved scale.
func (ks *attnKernels) args(op string, s tensor.AttnShape, qseg, kseg cuda.DevicePtr, aligned ...cuda.DevicePtr) (int, float32, error) {
	if ks.bf16 {
		return attnBF16Args(op, s, qseg, kseg, aligned...)
	}
	return attnArgs(op, s, qseg, kseg)
}

// attnForward is AttentionForward of either precision (ks): the arguments
// checked, nothing for an empty batch or query, else out, lse and (with
// keys) q, k, v must be given and the GPU must grant the forward's shared
// bytes; then one launch.
func (o *Ops) attnForward(op string, ks *attnKernels, out, lse, q, k, v cuda.DevicePtr, s tensor.AttnShape, qseg, kseg cuda.DevicePtr) error {
	dm, scale, err := ks.args(op, s, qseg, kseg, out, q, k, v)
	if err != nil {
		return err
	}
	if s.Batch == 0 || s.Tq == 0 {
		return nil
	}
	if out == 0 || lse == 0 || (s.Tk > 0 && (q == 0 || k == 0 || v == 0)) {
		return errf(op, "nil device buffer")
	}
	shared := ks.fwdShared(dm)
	if err := o.attnShared(op, shared); err != nil {
		return err
	}
	return o.launch3(ks.fwd[dm], ks.grid(s.Tq, s), cuda.Dim3{X: ks.threads}, shared,
		out, lse, q, k, v, qseg, kseg, s.Tq, s.Tk, s.Heads, s.HeadDim,
		s.QStride, s.KStride, s.VStride, s.OStride, attnBool(s.Causal), s.QPos0, s.KPos0, scale)
}

// attnRowDot is AttentionRowDot of either precision: ks.rowDot over one
// warp per (b, t, h), 256-thread blocks, grid-stride.
func (o *Ops) attnRowDot(op string, ks *attnKernels, d, dout, out cuda.DevicePtr, s tensor.AttnShape) error {
	if s.Batch < 0 || s.Tq < 0 || s.Heads <= 0 || s.HeadDim <= 0 || s.OStride < s.Heads*s.HeadDim {
		return errf(op, "bad shape: Batch %d, Tq %d, Heads %d, HeadDim %d, OStride %d", s.Batch, s.Tq, s.Heads, s.HeadDim, s.OStride)
	}
	rows := int64(s.Batch) * int64(s.Tq) * int64(s.Heads)
	if rows == 0 {
		return nil
	}
	if rows*32 > math.MaxInt32 {
		return errf(op, "Batch·Tq·Heads = %d too large", rows)
	}
	if d == 0 || dout == 0 || out == 0 {
		return errf(op, "nil device buffer")
	}
	n := int(rows) * 32
	return o.launch(ks.rowDot, o.gridFor(n, 256), 256, 0,
		d, dout, out, int(rows), s.Tq, s.Heads, s.HeadDim, s.OStride)
}

// attnBackward is AttentionBackward of either precision (ks): the
// arguments checked, nothing for an empty batch, query or key side, else
// every buffer must be given and the GPU must grant the larger of the two
// kernels' shared bytes; then dK, dV and dQ, in that order.
func (o *Ops) attnBackward(op string, ks *attnKernels, dq, dk, dv, dout, q, k, v, lse, d cuda.DevicePtr, s tensor.AttnShape, qseg, kseg cuda.DevicePtr) error {
	aligned := []cuda.DevicePtr{dout, q, k, v}
	if ks.bf16Grads {
		aligned = append(aligned, dq, dk, dv)
	}
	dm, scale, err := ks.args(op, s, qseg, kseg, aligned...)
	if err != nil {
		return err
	}
	if s.Batch == 0 || s.Tq == 0 || s.Tk == 0 {
		return nil
	}
	if dq == 0 || dk == 0 || dv == 0 || dout == 0 || q == 0 || k == 0 || v == 0 || lse == 0 || d == 0 {
		return errf(op, "nil device buffer")
	}
	dkvShared, dqShared := ks.dkvShared(dm), ks.dqShared(dm)
	if err := o.attnShared(op, max(dkvShared, dqShared)); err != nil {
		return err
	}
	block, causal := cuda.Dim3{X: ks.threads}, attnBool(s.Causal)
	if err := o.launch3(ks.dkv[dm], ks.grid(s.Tk, s), block, dkvShared,
		dk, dv, dout, q, k, v, lse, d, qseg, kseg, s.Tq, s.Tk, s.Heads, s.HeadDim,
		s.QStride, s.KStride, s.VStride, s.OStride, causal, s.QPos0, s.KPos0, scale); err != nil {
		return err
	}
	return o.launch3(ks.dq[dm], ks.grid(s.Tq, s), block, dqShared,
		dq, dout, q, k, v, lse, d, qseg, kseg, s.Tq, s.Tk, s.Heads, s.HeadDim,
		s.QStride, s.KStride, s.VStride, s.OStride, causal, s.QPos0, s.KPos0, scale)
}

// AttentionForward computes out (OStride rows) and lse [Batch·Heads·Tq]
// from q, k, v as tensor.AttentionForward does. qseg, kseg are the device
// copies of s.QSeg, s.KSeg (int32 [Batch·Tq], [Batch·Tk]) or 0 when those are
// nil. Every out element of the heads' columns and every lse is written.
//
// Launch: grid (ceil(Tq/64), Heads, Batch) × 256 threads, attnFwdShared
// bytes of dynamic shared memory (35 KiB at DMAX 32, 51 KiB at 64, 83 KiB
// at 128).
func (o *Ops) AttentionForward(out, lse, q, k, v cuda.DevicePtr, s tensor.AttnShape, qseg, kseg cuda.DevicePtr) error {
	return o.attnForward("AttentionForward", &attnF32, out, lse, q, k, v, s, qseg, kseg)
}

// AttentionRowDot sets d[(b·Heads + h)·Tq + t] = Σ_i dout·out over head h
// of row b·Tq + t (dout and out use OStride), as tensor.AttentionRowDot.
//
// Launch: one warp per (b, t, h), 256-thread blocks, grid-stride.
func (o *Ops) AttentionRowDot(d, dout, out cuda.DevicePtr, s tensor.AttnShape) error {
	return o.attnRowDot("AttentionRowDot", &attnF32, d, dout, out, s)
}

// AttentionBackward adds the gradients of tensor.AttentionBackward into dq,
// dk, dv (the layouts of q, k, v; they may be column ranges of one packed
// buffer): dout uses OStride, lse comes from AttentionForward and d from
// AttentionRowDot. Deterministic: no atomics, every sum in a fixed order.
//
// Launch: dK, dV first, grid (ceil(Tk/64), Heads, Batch), then dQ, grid
// (ceil(Tq/64), Heads, Batch), both 256 threads with attnBwdShared bytes of
// dynamic shared memory (54 KiB at DMAX 32, 86 KiB at 64, 150 KiB at 128).
func (o *Ops) AttentionBackward(dq, dk, dv, dout, q, k, v, lse, d cuda.DevicePtr, s tensor.AttnShape, qseg, kseg cuda.DevicePtr) error {
	return o.attnBackward("AttentionBackward", &attnF32, dq, dk, dv, dout, q, k, v, lse, d, s, qseg, kseg)
}

// bf16 kernels by DMAX (64 serves heads up to 64, 128 up to 128).
var (
	attnBF16Name    = map[int]string{64: "attention_fwd_bf16_d64", 128: "attention_fwd_bf16_d128"}
	attnBF16DKVName = map[int]string{64: "attention_bwd_dkv_bf16_d64", 128: "attention_bwd_dkv_bf16_d128"}
	attnBF16DQName  = map[int]string{64: "attention_bwd_dq_bf16_d64", 128: "attention_bwd_dq_bf16_d128"}
	// The variants that overwrite bf16 gradients.
	attnBF16DKVOutName = map[int]string{64: "attention_bwd_dkv_bf16_out_d64", 128: "attention_bwd_dkv_bf16_out_d128"}
	attnBF16DQOutName  = map[int]string{64: "attention_bwd_dq_bf16_out_d64", 128: "attention_bwd_dq_bf16_out_d128"}
)

// attnBF16 is the bf16 kernel set, adding to fp32 gradients; attnBF16Out
// is the same with the backward kernels that overwrite bf16 gradients.
var (
	attnBF16 = attnKernels{
		fwd: attnBF16Name, dkv: attnBF16DKVName, dq: attnBF16DQName, grid: attnBF16Grid, threads: attnBF16Threads,
		fwdShared: attnBF16Shared, dkvShared: attnBF16DKVShared, dqShared: attnBF16DQShared, rowDot: "attention_rowdot_bf16",
		bf16: true,
	}
	attnBF16Out = func() attnKernels {
		ks := attnBF16
		ks.dkv, ks.dq, ks.bf16Grads = attnBF16DKVOutName, attnBF16DQOutName, true
		return ks
	}()
)

// The bf16 kernels (FlashAttention-2 style): blocks of 8 warps (256
// threads) own 128 rows (queries in the forward and dQ kernels, keys in dK/dV)
// and loop over 64-row tiles of the other side, double-buffered in shared
// memory; tiles are [rows][DMAX+8] bf16. Blocks are numbered tile-major,
// (b, h) fastest: grid ceil(T/128)·Heads·Batch, one dimension.
const (
	attnBF16Rows    = 128
	attnBF16Cols    = 64
	attnBF16Threads = 256
)

// attnBF16Grid is the one-dimensional grid over t rows of every (b, h).
func attnBF16Grid(t int, s tensor.AttnShape) cuda.Dim3 {
	return cuda.Dim3{X: (t + attnBF16Rows - 1) / attnBF16Rows * s.Heads * s.Batch}
}

// attnBF16Shared is the bf16 forward's dynamic shared memory: the Q tile
// [128][DMAX+8], two stages of K and V tiles [64][DMAX+8] (bf16) and of the
// key segment ids [64] (int32).
func attnBF16Shared(dmax int) int {
	return 2*(attnBF16Rows+4*attnBF16Cols)*(dmax+8) + 4*2*attnBF16Cols
}

// attnBF16DKVShared is the dK/dV kernel's: K and V [128][DMAX+8], two
// stages of Q and dO [64][DMAX+8] and of lse, d and query segment ids [64].
func attnBF16DKVShared(dmax int) int {
	return 2*(2*attnBF16Rows+4*attnBF16Cols)*(dmax+8) + 4*3*2*attnBF16Cols
}

// attnBF16DQShared is the dQ kernel's: Q and dO [128][DMAX+8], two stages
// of K and V [64][DMAX+8] and of key segment ids [64].
func attnBF16DQShared(dmax int) int {
	return 2*(2*attnBF16Rows+4*attnBF16Cols)*(dmax+8) + 4*2*attnBF16Cols
}

// attnBF16Args adds the bf16 kernels' requirements to attnArgs': HeadDim
// and strides multiples of 8 elements, the bf16 buffers 16-byte aligned.
func attnBF16Args(op string, s tensor.AttnShape, qseg, kseg cuda.DevicePtr, bf16 ...cuda.DevicePtr) (dmax int, scale float32, err error) {
	dm, scale, err := attnArgs(op, s, qseg, kseg)
	if err != nil {
		return 0, 0, err
	}
	if s.HeadDim%8 != 0 || s.QStride%8 != 0 || s.KStride%8 != 0 || s.VStride%8 != 0 || s.OStride%8 != 0 {
		return 0, 0, errf(op, "HeadDim %d and strides (%d, %d, %d, %d) must be multiples of 8", s.HeadDim, s.QStride, s.KStride, s.VStride, s.OStride)
	}
	for _, p := range bf16 {
		if p%16 != 0 {
			return 0, 0, errf(op, "bf16 buffer %#x is not 16-byte aligned", uintptr(p))
		}
	}
	return max(dm, 64), scale, nil
}

// AttentionForwardBF16 is AttentionForward on tensor cores with q, k, v and
// out in bf16 (same strides, in elements) and lse in float32: fp32
// accumulation, the probabilities rounded to bf16 for the P·V product, so
// results match the fp32 kernel to about 1e-2 relative. It also needs
// HeadDim, every stride and the q, k, v, out addresses to be multiples of 8
// elements (16 bytes): tile rows move as 16-byte vectors.
//
// Launch: grid ceil(Tq/128)·Heads·Batch × 256 threads (8 warps of 16
// query rows), attnBF16Shared bytes (55 KiB at DMAX 64, 103 KiB at 128).
func (o *Ops) AttentionForwardBF16(out, lse, q, k, v cuda.DevicePtr, s tensor.AttnShape, qseg, kseg cuda.DevicePtr) error {
	return o.attnForward("AttentionForwardBF16", &attnBF16, out, lse, q, k, v, s, qseg, kseg)
}

// AttentionRowDotBF16 is AttentionRowDot with dout and out in bf16 (d in
// float32).
func (o *Ops) AttentionRowDotBF16(d, dout, out cuda.DevicePtr, s tensor.AttnShape) error {
	return o.attnRowDot("AttentionRowDotBF16", &attnBF16, d, dout, out, s)
}

// AttentionBackwardBF16 is AttentionBackward on tensor cores with dout, q,
// k, v in bf16 and lse, d and the gradients dq, dk, dv in float32 (added
// to; they use the element strides of q, k, v). P and dS are rounded to
// bf16 for their products, so gradients match the fp32 kernels to about
// 1e-2 relative. Same requirements as AttentionForwardBF16 (multiples of 8,
// 16-byte aligned bf16 buffers). Deterministic: no atomics.
//
// Launch: dK, dV over grid ceil(Tk/128)·Heads·Batch, attnBF16DKVShared
// bytes (74 KiB at DMAX 64, 138 KiB at 128), then dQ over
// ceil(Tq/128)·Heads·Batch, attnBF16DQShared bytes (73 KiB, 137 KiB); 256
// threads each (8 warps of 16 rows).
func (o *Ops) AttentionBackwardBF16(dq, dk, dv, dout, q, k, v, lse, d cuda.DevicePtr, s tensor.AttnShape, qseg, kseg cuda.DevicePtr) error {
	return o.attnBackward("AttentionBackwardBF16", &attnBF16, dq, dk, dv, dout, q, k, v, lse, d, s, qseg, kseg)
}

// AttentionBackwardBF16Out is AttentionBackwardBF16 writing the gradients
// dq, dk, dv as bf16 (same element strides as q, k, v) and OVERWRITING them:
// every element of the heads' columns of rows < Tq (dq) or < Tk (dk, dv) is
// written, bf16 of what AttentionBackwardBF16 adds to a zero buffer.
// Padding columns are left alone. The gradient buffers must be 16-byte
// aligned like the others.
func (o *Ops) AttentionBackwardBF16Out(dq, dk, dv, dout, q, k, v, lse, d cuda.DevicePtr, s tensor.AttnShape, qseg, kseg cuda.DevicePtr) error {
	return o.attnBackward("AttentionBackwardBF16Out", &attnBF16Out, dq, dk, dv, dout, q, k, v, lse, d, s, qseg, kseg)
}
