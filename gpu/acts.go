package gpu

import (
	"fmt"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/gpu/ops"
)

// layerActs are one block's saved activations on the device for up to Cap
// tokens (as model.LayerActs), with its MoE layer's routing and plan. The
// residual stream (In, Mid, Out), norms' rstd, attention's LSE, routing and
// the expert outputs Y are fp32; LN1, QKV, Att, LN2, X, Hpre and Hact are in
// the model's precision (bf16 in mixed precision).
type layerActs struct {
	In, LN1, Rstd1, QKV, Att, LSE, Mid, LN2, Rstd2, Out cuda.DevicePtr

	RLogits, Probs, Gates cuda.DevicePtr // [N, E] router logits and scores; [N, K] gates
	Experts               cuda.DevicePtr // [N, K] int32 chosen experts
	// The plan: counts and offsets per expert, token and gate per slot,
	// slot per choice (−1 dropped); int32 except SlotGate.
	Routed, Counts, Offsets, Token, SlotOf cuda.DevicePtr
	SlotGate                               cuda.DevicePtr // [S] float
	X, Y                                   cuda.DevicePtr // [S, D] gathered inputs, expert outputs
	Hpre, Hact                             cuda.DevicePtr // [S, H]
	ZLSE                                   cuda.DevicePtr // [N] float64 router logsumexp (z-loss)
	// The aux loss's statistics [2E+1] and finished values [2E+2] (F, P,
	// value, count: ops.RouterAuxFinish), and the z-loss's [3] (sum,
	// count, value), float64.
	AuxStats, AuxFin, ZStats cuda.DevicePtr
}

// acts are the model's activations and backward scratch for up to cap
// tokens, allocated together.
type acts struct {
	cap int
	mem arena

	Tokens, Pos, Targets, Seg cuda.DevicePtr // [N] int32
	Mask                      cuda.DevicePtr // [N] uint8: target >= 0
	// Embedding backward's deterministic index of the batch (host-built):
	// positions sorted by token id, unique ids and their starts; likewise
	// for positions.
	TokOrder, TokUnique, TokStarts cuda.DevicePtr
	PosOrder, PosUnique, PosStarts cuda.DevicePtr

	Res0       cuda.DevicePtr // [N, D]
	Layers     []layerActs
	LNF, RstdF cuda.DevicePtr // [N, D] (model precision), [N]
	// Logits [N, V] in the model's precision; the cross-entropy overwrites
	// them with their gradient (DLogits is the same buffer).
	Logits, DLogits cuda.DevicePtr
	Losses          cuda.DevicePtr // [N]
	CESum           cuda.DevicePtr // float64 [2]: loss sum, counted rows

	// Backward scratch, fp32 except DHact (the model's precision); DY,
	// DHpre and DQKV exist in fp32 only (mixed precision writes DYLow,
	// DHpreLow, DQKVLow).
	DRes, DTmp, DQKV, AttD cuda.DevicePtr
	DY, DX, DHact, DHpre   cuda.DevicePtr // [S, D], [S, H]
	DSlotGate, DGates      cuda.DevicePtr // [S], [N, K]
	DProbs, DRLogits       cuda.DevicePtr // [N, E]
	// Their copies in the model's precision, the operands of the weight
	// gradients' products (the same buffers as the fp32 ones in fp32).
	DResLow, DAtt, DYLow, DHpreLow, DQKVLow, DRLogitsLow cuda.DevicePtr

	NormScratch, ReduceScratch cuda.DevicePtr
	PlanWork                   cuda.DevicePtr // the plan's scratch (ops.PlanWorkBytes)
}

// newActs allocates activations for n tokens in the model's precision.
func (m *Model) newActs(n int) (*acts, error) {
	c := m.Cfg
	d, v, e, k, h, heads := c.DModel, c.Vocab, c.Experts, c.TopK, c.ExpertHidden, c.Heads
	s := n * k
	a := &acts{cap: n}
	a.mem.d = m.dev
	f, i32, f64 := a.mem.f32, a.mem.i32, a.mem.f64
	lp := func(cnt int) cuda.DevicePtr { return a.mem.alloc(m.es * cnt) } // model precision
	a.Tokens, a.Pos, a.Targets, a.Seg, a.Mask = i32(n), i32(n), i32(n), i32(n), i32(n)
	a.TokOrder, a.TokUnique, a.TokStarts = i32(n), i32(n), i32(n+1)
	a.PosOrder, a.PosUnique, a.PosStarts = i32(n), i32(n), i32(n+1)
	a.Res0 = f(n * d)
	in := a.Res0
	for l := 0; l < c.Layers; l++ {
		la := layerActs{In: in, LN1: lp(n * d), Rstd1: f(n), QKV: lp(n * 3 * d), Att: lp(n * d), LSE: f(n * heads),
			Mid: f(n * d), LN2: lp(n * d), Rstd2: f(n), Out: f(n * d),
			RLogits: f(n * e), Probs: f(n * e), Gates: f(s), Experts: i32(s),
			Routed: i32(e), Counts: i32(e), Offsets: i32(e + 1), Token: i32(s), SlotOf: i32(s), SlotGate: f(s),
			X: lp(s * d), Y: f(s * d), Hpre: lp(s * h), Hact: lp(s * h),
			ZLSE: f64(n), AuxStats: f64(2*e + 1), AuxFin: f64(2*e + 2), ZStats: f64(3),
		}
		a.Layers = append(a.Layers, la)
		in = la.Out
	}
	a.LNF, a.RstdF, a.Logits, a.Losses, a.CESum = lp(n*d), f(n), lp(n*v), f(n), f64(2)
	a.DLogits = a.Logits
	a.DRes, a.DTmp, a.AttD = f(n*d), f(n*d), f(n*heads)
	a.DX, a.DHact = f(s*d), lp(s*h)
	a.DSlotGate, a.DGates, a.DProbs, a.DRLogits = f(s), f(s), f(n*e), f(n*e)
	if m.bf16 {
		// The expert backward runs in bf16 from the fused combine backward
		// on, and attention's backward writes bf16 dQKV: no fp32 dY, dHpre
		// or dQKV.
		a.DResLow, a.DAtt, a.DYLow, a.DHpreLow = lp(n*d), lp(n*d), lp(s*d), lp(s*h)
		a.DQKVLow, a.DRLogitsLow = lp(n*3*d), lp(n*e)
	} else {
		a.DY, a.DHpre, a.DQKV = f(s*d), f(s*h), f(n*3*d)
		a.DResLow, a.DAtt, a.DYLow, a.DHpreLow = a.DRes, a.DTmp, a.DY, a.DHpre
		a.DQKVLow, a.DRLogitsLow = a.DQKV, a.DRLogits
	}
	a.NormScratch = f(ops.RMSNormBackwardScratch(n, d))
	a.PlanWork = a.mem.alloc(ops.PlanWorkBytes(n, e, k))
	a.ReduceScratch = a.mem.alloc(max(ops.RouterAuxScratchBytes(n, e), ops.RouterZLossScratchBytes(n), 8*ops.SumSquaresScratch(1)))
	if a.mem.err != nil {
		a.mem.free()
		return nil, fmt.Errorf("gpu: activations for %d tokens: %w", n, a.mem.err)
	}
	return a, nil
}
