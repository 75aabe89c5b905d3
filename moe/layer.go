package moe

import "github.com/moetrain/moetrain/tensor"

// Dims are an MoE FFN layer's sizes.
type Dims struct {
	D, H, E, K int
}

// Weights are one MoE layer's parameters (views into a flat buffer).
type Weights struct {
	Router []float32 // [E, D]
	W1     []float32 // [E, H, D]
	W2     []float32 // [E, D, H]
}

// State is one MoE layer's saved activations for N tokens, allocated once per
// largest N and reused.
type State struct {
	N       int
	Logits  []float32 // [N, E]
	Routing Routing
	Plan    Plan
	Aux     Aux
	ZLoss   ZLoss // computed only when the router's ZLossCoef > 0
	// Bias (nil = none) is the layer's aux-loss-free balancing bias [E],
	// owned by the caller and set before Forward; it steers selection only.
	Bias []float32
	X    []float32 // [S, D] gathered inputs, S ≤ N·K kept slots
	Hpre []float32 // [S, H]
	Hact []float32 // [S, H]
	Y    []float32 // [S, D] expert outputs (before gating)
}

// Scratch is Backward's working memory for N tokens. One Scratch serves
// every layer (backward runs one layer at a time), so it is kept apart from
// the per-layer State.
type Scratch struct {
	dY, dX       []float32 // [S, D]
	dHact, dHpre []float32 // [S, H]
	dSlotGate    []float32 // [S]
	dGates       []float32 // [N, K]
	dProbs       []float32 // [N, E]
	dLogits      []float32 // [N, E]
}

// Resize prepares sc for n tokens, growing storage only when needed.
func (sc *Scratch) Resize(dm Dims, n int) {
	s := n * dm.K
	sc.dY = grow(sc.dY, s*dm.D)
	sc.dX = grow(sc.dX, s*dm.D)
	sc.dHact = grow(sc.dHact, s*dm.H)
	sc.dHpre = grow(sc.dHpre, s*dm.H)
	sc.dSlotGate = grow(sc.dSlotGate, s)
	sc.dGates = grow(sc.dGates, s)
	sc.dProbs = grow(sc.dProbs, n*dm.E)
	sc.dLogits = grow(sc.dLogits, n*dm.E)
}

// Resize prepares st for n tokens, growing storage only when needed.
func (st *State) Resize(dm Dims, n int) {
	s := n * dm.K
	st.N = n
	st.Logits = grow(st.Logits, n*dm.E)
	st.Routing.Resize(n, dm.E, dm.K)
	st.X = grow(st.X, s*dm.D)
	st.Hpre = grow(st.Hpre, s*dm.H)
	st.Hact = grow(st.Hact, s*dm.H)
	st.Y = grow(st.Y, s*dm.D)
}

// Forward routes x [N, D] and ACCUMULATES the gated expert outputs into out
// [N, D] (callers pass the residual stream, so the residual add is free).
// router and its Options choose scores, selection, capacity and z-loss;
// st.Bias (len E or nil) steers selection. mask (nil = all) selects the
// tokens counted by the aux loss and the z-loss; st.Aux and st.ZLoss hold
// them afterwards. st must have been Resize'd for N.
func Forward(out, x []float32, w Weights, dm Dims, router Router, mask []bool, st *State) {
	n, d, e := st.N, dm.D, dm.E
	opt := router.Options()
	r := &st.Routing
	tensor.Gemm(false, true, n, e, d, x, d, w.Router, d, 0, st.Logits, e)
	scoreForward(r.Probs, st.Logits, n, e, opt.Score)
	r.Bias = st.Bias
	router.Select(r)
	st.Plan.BuildCapacity(r, opt.Capacity(n, e, dm.K), opt.Drop)
	ComputeAux(&st.Aux, r, mask)
	if opt.ZLossCoef > 0 {
		st.ZLoss.Forward(st.Logits, n, e, mask)
	} else {
		st.ZLoss.Sum, st.ZLoss.Count, st.ZLoss.Value = 0, 0, 0
	}
	p := &st.Plan
	tensor.GatherRows(st.X, x, p.Token, d)
	Experts{D: d, H: dm.H}.Forward(st.Y, st.Hpre, st.Hact, st.X, w.W1, w.W2, p.Offsets)
	tensor.ScatterAddRows(out, st.Y[:p.Slots()*d], p.Token, p.Gate, d)
}

// Backward, given dout [N, D] (the gradient of Forward's output), accumulates
// dx [N, D] and the weight gradients dw. auxCoef scales the aux loss's
// gradient (the aux term of the total loss is auxCoef·aux). sc must have
// been Resize'd for at least N tokens. The z-loss gradient (coefficient
// router.Options().ZLossCoef) is included; dropped slots get none.
func Backward(dx []float32, dw Weights, dout, x []float32, w Weights, dm Dims, router Router, mask []bool, auxCoef float64, st *State, sc *Scratch) {
	n, d, e := st.N, dm.D, dm.E
	opt := router.Options()
	r := &st.Routing
	p := &st.Plan
	s := p.Slots()
	// Gradient of combine: out[t] += gate_s·y_s.
	tensor.GatherRows(sc.dY[:s*d], dout, p.Token, d)
	tensor.RowDot(sc.dSlotGate[:s], sc.dY[:s*d], st.Y[:s*d], s, d)
	// Scale each slot's row by its gate in place; not tensor.Scale per row:
	// that nests a ParallelFor whose closure is a heap allocation per row.
	tensor.ParallelFor(s, 64, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			g := p.Gate[i]
			row := sc.dY[i*d : (i+1)*d]
			for j := range row {
				row[j] *= g
			}
		}
	})
	Experts{D: d, H: dm.H}.Backward(sc.dX, dw.W1, dw.W2, sc.dHact, sc.dHpre, sc.dY, st.X, st.Hpre, st.Hact, w.W1, w.W2, p.Offsets)
	tensor.ScatterAddRows(dx, sc.dX[:s*d], p.Token, nil, d)
	// Gates → router probabilities (+ aux) → logits → router weights and x.
	for i, slot := range p.SlotOf[:n*dm.K] {
		if slot < 0 {
			sc.dGates[i] = 0 // dropped: the gate does not reach the output
			continue
		}
		sc.dGates[i] = sc.dSlotGate[slot]
	}
	clear(sc.dProbs[:n*e])
	router.Backward(sc.dProbs, sc.dGates, r)
	AuxBackward(sc.dProbs, &st.Aux, r, mask, auxCoef)
	clear(sc.dLogits[:n*e])
	scoreBackward(sc.dLogits, sc.dProbs, r.Probs, n, e, opt.Score)
	if opt.ZLossCoef > 0 {
		st.ZLoss.Backward(sc.dLogits, st.Logits, n, e, mask, opt.ZLossCoef)
	}
	tensor.Gemm(true, false, e, d, n, sc.dLogits, e, x, d, 1, dw.Router, d)
	tensor.Gemm(false, false, n, d, e, sc.dLogits, e, w.Router, d, 1, dx, d)
}

// RoutedLoad is the number of token slots the router sent to each expert in
// the last Forward, before capacity: the signal for bias balancing.
func (st *State) RoutedLoad() []int { return st.Plan.Routed }
