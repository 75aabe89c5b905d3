package ops

import (
	"math"

	"github.com/moetrain/moetrain/cuda"
)

// Launch shape of cuda/kernels/rows.cu: kThreads threads per block, one
// warp per row; the combine handles at most kMaxK choices per token.
const (
	rowsThreads = 256
	rowsMaxK    = 32
)

// Row kernels (cuda/kernels/rows.cu) exist for float32 (the methods without
// suffix) and bfloat16 (…BF16: rows of uint16 bfloat16 bits, arithmetic in
// float32, gates and dot outputs float32). Rows are d contiguous elements; rows move as 16-byte
// vectors when d allows it and the base pointers are 16-byte aligned, else
// element by element (same results either way). None of them uses atomics:
// results are deterministic.

// GatherRows sets dst[i, :] = src[idx[i], :] for i < rows (idx int32, each
// a valid row of src): tensor.GatherRows, e.g. X = x[Plan.Token].
func (o *Ops) GatherRows(dst, src, idx cuda.DevicePtr, rows, d int) error {
	return o.rowsGather("rows_gather_f32", dst, src, idx, rows, d)
}

// GatherRowsBF16 is GatherRows for bfloat16 rows.
func (o *Ops) GatherRowsBF16(dst, src, idx cuda.DevicePtr, rows, d int) error {
	return o.rowsGather("rows_gather_bf16", dst, src, idx, rows, d)
}

func (o *Ops) rowsGather(name string, dst, src, idx cuda.DevicePtr, rows, d int) error {
	return o.warpRows(name, rows, d, dst == 0 || src == 0 || idx == 0, dst, src, idx, rows, d)
}

// Combine is the MoE combine, per token instead of a scatter: for each
// token t < n and choice j < k with slot s = slotOf[t·k+j] ≥ 0,
// out[t, :] += gates[t·k+j]·y[s, :], a token's slots taken in increasing s.
// gates are the router's [N, K] choice gates (Routing.Gates, which
// Plan.Gate[s] copies). It equals tensor.ScatterAddRows(out, Y, Plan.Token,
// Plan.Gate, d) bit for bit in float32 (same order, no fused multiply-add).
// 1 <= k <= 32. out is read and written.
func (o *Ops) Combine(out, y, slotOf, gates cuda.DevicePtr, n, k, d int) error {
	if gates == 0 {
		return errf("Combine", "nil gates (CombineBackward sums without gates)")
	}
	return o.rowsCombine("rows_combine_f32", out, 0, y, slotOf, gates, n, k, d)
}

// CombineOnto is Combine onto a separate residual: out[t, :] = res[t, :] +
// Σ gates·y over token t's kept slots, for every token (res and out must
// not overlap; res is only read). Bit for bit Combine on a copy of res.
func (o *Ops) CombineOnto(out, res, y, slotOf, gates cuda.DevicePtr, n, k, d int) error {
	if gates == 0 || res == 0 {
		return errf("CombineOnto", "nil gates or residual")
	}
	return o.rowsCombine("rows_combine_f32", out, res, y, slotOf, gates, n, k, d)
}

// CombineBF16 is Combine for bfloat16 out and y (float32 gates); each output
// element is rounded to bfloat16 once, after its float32 sum.
func (o *Ops) CombineBF16(out, y, slotOf, gates cuda.DevicePtr, n, k, d int) error {
	if gates == 0 {
		return errf("CombineBF16", "nil gates (CombineBackwardBF16 sums without gates)")
	}
	return o.rowsCombine("rows_combine_bf16", out, 0, y, slotOf, gates, n, k, d)
}

// CombineBackward is the combine's input gradient: dx[t, :] += dX[s, :] over
// token t's kept slots s in increasing s, as tensor.ScatterAddRows(dx, dX,
// Plan.Token, nil, d) (bit for bit in float32).
func (o *Ops) CombineBackward(dx, dX, slotOf cuda.DevicePtr, n, k, d int) error {
	return o.rowsCombine("rows_combine_f32", dx, 0, dX, slotOf, 0, n, k, d)
}

// CombineBackwardBF16 is CombineBackward for bfloat16 rows.
func (o *Ops) CombineBackwardBF16(dx, dX, slotOf cuda.DevicePtr, n, k, d int) error {
	return o.rowsCombine("rows_combine_bf16", dx, 0, dX, slotOf, 0, n, k, d)
}

func (o *Ops) rowsCombine(name string, out, res, y, slotOf, gates cuda.DevicePtr, n, k, d int) error {
	if err := rowsCheck(name, n, d); err != nil { // sizes before k; warpRows repeats this cheap check
		return err
	}
	if k < 1 || k > rowsMaxK || n*k > math.MaxInt32 {
		return errf(name, "k=%d (n=%d): need 1 <= k <= %d", k, n, rowsMaxK)
	}
	return o.warpRows(name, n, d, out == 0 || y == 0 || slotOf == 0, out, res, y, slotOf, gates, n, k, d)
}

// RowDot sets out[i] = Σ_j a[i, j]·b[i, j] for n rows of width d
// (tensor.RowDot; float32 sums in a fixed order other than the CPU's, so
// equal to it within rounding).
func (o *Ops) RowDot(out, a, b cuda.DevicePtr, n, d int) error {
	return o.rowsDot("rows_dot_f32", out, a, b, n, d)
}

// RowDotBF16 is RowDot for bfloat16 a and b (float32 out).
func (o *Ops) RowDotBF16(out, a, b cuda.DevicePtr, n, d int) error {
	return o.rowsDot("rows_dot_bf16", out, a, b, n, d)
}

func (o *Ops) rowsDot(name string, out, a, b cuda.DevicePtr, n, d int) error {
	if err := rowsCheck(name, n, d); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if out == 0 || (d > 0 && (a == 0 || b == 0)) {
		return errf(name, "nil buffer")
	}
	return o.launch(name, o.gridFor(n*32, rowsThreads), rowsThreads, 0, out, a, b, n, d)
}

// ScaleRows sets x[i, :] *= gate[i] for i < rows, in place (the backward's
// dY scaled by each slot's gate).
func (o *Ops) ScaleRows(x, gate cuda.DevicePtr, rows, d int) error {
	return o.rowsScale("rows_scale_f32", x, gate, rows, d)
}

// ScaleRowsBF16 is ScaleRows for bfloat16 rows (float32 gates).
func (o *Ops) ScaleRowsBF16(x, gate cuda.DevicePtr, rows, d int) error {
	return o.rowsScale("rows_scale_bf16", x, gate, rows, d)
}

func (o *Ops) rowsScale(name string, x, gate cuda.DevicePtr, rows, d int) error {
	return o.warpRows(name, rows, d, x == 0 || gate == 0, x, gate, rows, d)
}

// SlotGradsToChoices sets dgates[i] = dslot[slotOf[i]] for the nk = N·K choices,
// 0 where slotOf[i] < 0 (dropped): the gradient of the router's gates from
// the per-slot gate gradients (float32).
func (o *Ops) SlotGradsToChoices(dgates, dslot, slotOf cuda.DevicePtr, nk int) error {
	const name = "rows_dgates_f32"
	if nk < 0 || nk > math.MaxInt32 {
		return errf(name, "nk=%d out of range", nk)
	}
	if nk == 0 {
		return nil
	}
	if dgates == 0 || dslot == 0 || slotOf == 0 {
		return errf(name, "nil buffer")
	}
	return o.launch(name, o.gridFor(nk, rowsThreads), rowsThreads, 0, dgates, dslot, slotOf, nk)
}

// warpRows launches row kernel name with args, one warp per row, after the
// checks the row kernels share: sizes in range (rowsCheck), nothing to do
// without rows or columns, else an error when a buffer is nil (nilBuf).
func (o *Ops) warpRows(name string, rows, d int, nilBuf bool, args ...any) error {
	if err := rowsCheck(name, rows, d); err != nil {
		return err
	}
	if rows == 0 || d == 0 {
		return nil
	}
	if nilBuf {
		return errf(name, "nil buffer")
	}
	return o.launch(name, o.gridFor(rows*32, rowsThreads), rowsThreads, 0, args...)
}

// rowsCheck rejects negative sizes and row counts the kernels' 32-bit
// indices cannot hold.
func rowsCheck(name string, rows, d int) error {
	if rows < 0 || d < 0 || rows > math.MaxInt32/32 || d > math.MaxInt32 {
		return errf(name, "rows=%d d=%d out of range", rows, d)
	}
	return nil
}

// GatherDotScaleBF16 is the mixed-precision backward of Combine in one pass
// over the S = rows slots: with r = src[idx[s], :] (fp32 rows of width d,
// the gradient of the layer output), dot[s] = Σ r·y[s, :] (y fp32: the gate
// gradients, float32) and dst[s, :] = bf16(gate[s]·r) (bf16 rows): what
// GatherRows, RowDot, ScaleRows and CastF32ToBF16 compute over fp32 [S, d]
// scratch, with the dot summed in another order.
func (o *Ops) GatherDotScaleBF16(dst, dot, src, idx, y, gate cuda.DevicePtr, rows, d int) error {
	return o.warpRows("rows_gather_dot_scale_bf16", rows, d, dst == 0 || dot == 0 || src == 0 || idx == 0 || y == 0 || gate == 0,
		dst, dot, src, idx, y, gate, rows, d)
}
