package gpu

import (
	"fmt"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/gpu/ops"
)

// layerActs are one block's saved activations on the device for up to Cap
// tokens (as model.LayerActs), with its MoE layer's routing and plan.
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

	Res0               cuda.DevicePtr // [N, D]
	Layers             []layerActs
	LNF, RstdF, Logits cuda.DevicePtr // [N, D], [N], [N, V]
	Losses             cuda.DevicePtr // [N]
	CESum              cuda.DevicePtr // float64 [2]: loss sum, counted rows

	DLogits, DRes, DTmp, DQKV, AttD cuda.DevicePtr
	DY, DX, DHact, DHpre            cuda.DevicePtr // [S, D], [S, H]
	DSlotGate, DGates               cuda.DevicePtr // [S], [N, K]
	DProbs, DRLogits                cuda.DevicePtr // [N, E]
	NormScratch, ReduceScratch      cuda.DevicePtr
	PlanWork                        cuda.DevicePtr // the plan's scratch (ops.PlanWorkBytes)
}

// newActs allocates activations for n tokens.
func (m *Model) newActs(n int) (*acts, error) {
	c := m.Cfg
	d, v, e, k, h, heads := c.DModel, c.Vocab, c.Experts, c.TopK, c.ExpertHidden, c.Heads
	s := n * k
	a := &acts{cap: n}
	a.mem.d = m.dev
	f, i32, f64 := a.mem.f32, a.mem.i32, a.mem.f64
	a.Tokens, a.Pos, a.Targets, a.Seg, a.Mask = i32(n), i32(n), i32(n), i32(n), i32(n)
	a.TokOrder, a.TokUnique, a.TokStarts = i32(n), i32(n), i32(n+1)
	a.PosOrder, a.PosUnique, a.PosStarts = i32(n), i32(n), i32(n+1)
	a.Res0 = f(n * d)
	in := a.Res0
	for l := 0; l < c.Layers; l++ {
		la := layerActs{In: in, LN1: f(n * d), Rstd1: f(n), QKV: f(n * 3 * d), Att: f(n * d), LSE: f(n * heads),
			Mid: f(n * d), LN2: f(n * d), Rstd2: f(n), Out: f(n * d),
			RLogits: f(n * e), Probs: f(n * e), Gates: f(s), Experts: i32(s),
			Routed: i32(e), Counts: i32(e), Offsets: i32(e + 1), Token: i32(s), SlotOf: i32(s), SlotGate: f(s),
			X: f(s * d), Y: f(s * d), Hpre: f(s * h), Hact: f(s * h),
			ZLSE: f64(n), AuxStats: f64(2*e + 1), AuxFin: f64(2*e + 2), ZStats: f64(3),
		}
		a.Layers = append(a.Layers, la)
		in = la.Out
	}
	a.LNF, a.RstdF, a.Logits, a.Losses, a.CESum = f(n*d), f(n), f(n*v), f(n), f64(2)
	a.DLogits, a.DRes, a.DTmp, a.DQKV, a.AttD = f(n*v), f(n*d), f(n*d), f(n*3*d), f(n*heads)
	a.DY, a.DX, a.DHact, a.DHpre = f(s*d), f(s*d), f(s*h), f(s*h)
	a.DSlotGate, a.DGates, a.DProbs, a.DRLogits = f(s), f(s), f(n*e), f(n*e)
	a.NormScratch = f(ops.RMSNormBackwardScratch(n, d))
	a.PlanWork = a.mem.alloc(ops.PlanWorkBytes(n, e, k))
	a.ReduceScratch = a.mem.alloc(max(ops.RouterAuxScratchBytes(n, e), ops.RouterZLossScratchBytes(n), 8*ops.SumSquaresScratch(1)))
	if a.mem.err != nil {
		a.mem.free()
		return nil, fmt.Errorf("gpu: activations for %d tokens: %w", n, a.mem.err)
	}
	return a, nil
}
