package moe

import "github.com/moetrain/moetrain/tensor"

// Dims are an MoE FFN layer's sizes.
type Dims struct {
	D, H, E, K int
}

// Weights are one MoE layer's parameters (views into a flat buffer).
//
// With Down and Up (the DCCA layout, docs/algorithms/ep-dispatch.md#dcca-layout)
// every token is projected to R = len(Down)/D dimensions on its own rank
// before the dispatch and the combined expert outputs back to D after the
// combine; the experts work at R: W1 is [E, H, R] and W2 [E, R, H]. Down
// and Up are shared by all experts and replicated on every rank.
type Weights struct {
	Router []float32 // [E, D]
	W1     []float32 // [E, H, D] ([E, H, R] with Down)
	W2     []float32 // [E, D, H] ([E, R, H] with Down)
	Down   []float32 // [R, D] or nil
	Up     []float32 // [D, R] or nil
}

// inner is the row width through dispatch and experts: R with the DCCA
// projections, else D.
func (w Weights) inner(d int) int {
	if w.Down == nil || d == 0 {
		return d
	}
	return len(w.Down) / d
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
	// Ex (nil = the whole layer here) is the expert-/tensor-parallel
	// communication, set by the caller before Forward.
	Ex Exchange
	// DeferStats, when set, makes Forward only accumulate the aux-loss and
	// z-loss statistics of this rank's tokens; the caller reduces them over
	// the ranks holding the other tokens and calls FinishStats before
	// Backward (parallel layouts use global statistics).
	DeferStats bool
	// StaticSplit (expert parallelism) says every member of the EP group
	// routes the same number of tokens with a router whose groups give every
	// member the same number of rows (MoGE with groups a multiple of EP), so
	// the dispatch's sizes are known without exchanging them first.
	StaticSplit bool
	X           []float32 // [S, D] gathered inputs, S ≤ N·K kept slots (plan order)
	Y           []float32 // [S, D] expert outputs before gating (plan order, whole: summed over TP)
	// The rows this rank's experts process, expert-major: X itself without
	// expert parallelism, else the rows received from the group's members.
	XL   []float32 // [R, D]
	Hpre []float32 // [R, H]
	Hact []float32 // [R, H]
	YL   []float32 // [R, D]
	comb []float32 // [N, D] combined partial outputs (tensor parallelism)
	Z    []float32 // [N, R] down-projected inputs (DCCA)
	Zout []float32 // [N, R] combined expert outputs before Up (DCCA)
	disp dispatch
	ep   bool // the last Forward dispatched over an expert-parallel group
	// piped: it took the chunked path (Options.Exchange; pipeline.go).
	piped   bool
	pp      pipe
	planOff []int // [EP] first plan row of each member's block
}

// Scratch is Backward's working memory for N tokens. One Scratch serves
// every layer (backward runs one layer at a time), so it is kept apart from
// the per-layer State.
type Scratch struct {
	dY, dX       []float32 // [S, D]
	dYL, dXL     []float32 // [R, D] (expert parallelism only)
	dxN          []float32 // [N, D] (tensor parallelism only)
	dZ, dZout    []float32 // [N, R] (DCCA only)
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

// FinishStats derives the aux loss and z-loss from their (reduced)
// statistics; Forward calls it itself unless DeferStats is set.
func (st *State) FinishStats(k int, zloss bool) {
	st.Aux.Finish(k)
	if zloss {
		st.ZLoss.Finish()
	}
}

// local returns the expert-major rows, their offsets per local expert and
// the local experts' count for the last plan.
func (st *State) local(d int) (x []float32, offsets []int) {
	if st.ep {
		return st.XL[:st.disp.rows()*d], st.disp.offsets
	}
	return st.X[:st.Plan.Slots()*d], st.Plan.Offsets
}

// Forward routes x [N, D] and ACCUMULATES the gated expert outputs into out
// [N, D] (callers pass the residual stream, so the residual add is free).
// router and its Options choose scores, selection, capacity and z-loss;
// st.Bias (len E or nil) steers selection. mask (nil = all) selects the
// tokens counted by the aux loss and the z-loss; st.Aux and st.ZLoss hold
// them afterwards (only their sums with st.DeferStats). st must have been
// Resize'd for N. With st.Ex, w holds this rank's experts (E/EP of them,
// hidden dimension dm.H of its tensor-parallel shard) and dm.E is the global
// expert count; the capacity then applies per rank (to its N tokens).
func Forward(out, x []float32, w Weights, dm Dims, router Router, mask []bool, st *State) {
	n, d, e := st.N, dm.D, dm.E
	opt := router.Options()
	r := &st.Routing
	tensor.Gemm(false, true, n, e, d, x, d, w.Router, d, 0, st.Logits, e)
	scoreForward(r.Probs, st.Logits, n, e, opt.Score)
	r.Bias = st.Bias
	router.Select(r)
	st.Plan.BuildCapacity(r, opt.Capacity(n, e, dm.K), opt.Drop)
	st.Aux.Accumulate(r, mask)
	if opt.ZLossCoef > 0 {
		st.ZLoss.Forward(st.Logits, n, e, mask)
	} else {
		st.ZLoss.Sum, st.ZLoss.Count, st.ZLoss.Value = 0, 0, 0
	}
	if !st.DeferStats {
		st.FinishStats(r.K, opt.ZLossCoef > 0)
	}
	p := &st.Plan
	s := p.Slots()
	// From here on rows are dm.D = R wide under DCCA (xin: the layer's
	// input rows, tgt: where the gated outputs accumulate).
	dModel := d
	xin, tgt, d := st.descend(out, x, w, d)
	dm.D = d
	tensor.GatherRows(st.X, xin, p.Token, d)
	st.ep, st.piped = false, false
	if st.Ex != nil {
		if size, _ := st.Ex.EP(); size > 1 {
			st.ep = true
			if opt.Exchange.piped() {
				st.piped = true
				st.pipeForward(w, dm, opt.Exchange)
				st.combine(tgt, dm)
				st.ascend(out, w, dModel)
				return
			}
			st.disp.dispatch(st.Ex, p, &st.XL, st.X[:s*d], d, st.StaticSplit, n, dm.K)
		}
	}
	xl, offs := st.local(d)
	rows := len(xl) / max(d, 1)
	st.Hpre = grow(st.Hpre, rows*dm.H)
	st.Hact = grow(st.Hact, rows*dm.H)
	yl := st.Y
	if st.ep {
		st.YL = grow(st.YL, rows*d)
		yl = st.YL
	}
	Experts{D: d, H: dm.H}.Forward(yl, st.Hpre, st.Hact, xl, w.W1, w.W2, offs)
	if st.ep {
		st.disp.backward(st.Ex, st.Y[:s*d], st.YL[:rows*d], d)
	}
	st.combine(tgt, dm)
	st.ascend(out, w, dModel)
}

// descend, under DCCA, projects x [N, d] down to st.Z = x·Downᵀ [N, R] and
// clears st.Zout [N, R], where the gated outputs then accumulate; it
// returns them and R. Without DCCA it returns x, out and d.
func (st *State) descend(out, x []float32, w Weights, d int) (xin, tgt []float32, width int) {
	if w.Down == nil {
		return x, out, d
	}
	n, r := st.N, w.inner(d)
	z, zout := lowRank(&st.Z, &st.Zout, n*r)
	tensor.Gemm(false, true, n, r, d, x, d, w.Down, d, 0, z, r)
	return z, zout, r
}

// lowRank sizes a DCCA pass's [N, R] buffers (size = N·R floats): *proj
// for a projection's output and *acc, cleared, for what accumulates; it
// returns both.
func lowRank(proj, acc *[]float32, size int) ([]float32, []float32) {
	*proj = grow(*proj, size)
	*acc = grow(*acc, size)
	clear(*acc)
	return *proj, *acc
}

// ascend adds the up-projected combined outputs Zout·Upᵀ to out [N, d]
// (DCCA; else nothing).
func (st *State) ascend(out []float32, w Weights, d int) {
	if w.Down == nil {
		return
	}
	n, r := st.N, w.inner(d)
	tensor.Gemm(false, true, n, d, r, st.Zout, r, w.Up, r, 1, out, d)
}

// combine accumulates the gated expert outputs Y (plan order) into out.
func (st *State) combine(out []float32, dm Dims) {
	p := &st.Plan
	n, d, s := st.N, dm.D, p.Slots()
	if tpOf(st.Ex) == 1 {
		tensor.ScatterAddRows(out, st.Y[:s*d], p.Token, p.Gate, d)
		return
	}
	// Tensor parallelism: Y holds this rank's partial sums (its slice of
	// every expert's hidden dimension). Combining is linear, so the partial
	// outputs are combined per token first and the sum over TP runs on
	// [N, D] rather than on the K-times larger [S, D].
	st.comb = grow(st.comb, n*d)
	clear(st.comb[:n*d])
	tensor.ScatterAddRows(st.comb, st.Y[:s*d], p.Token, p.Gate, d)
	st.Ex.SumTP(st.comb[:n*d])
	tensor.AddInPlace(out[:n*d], st.comb[:n*d])
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
	// Under DCCA the rows are R wide from here to the input projection.
	dModel := d
	dcomb, dxin, d := st.ascendBackward(dw, dout, dx, w, d, sc)
	dm.D = d
	// Gradient of combine, out[t] += gate_s·y_s, in one pass: dSlotGate_s =
	// dcomb[t]·y_s and dY_s = gate_s·dcomb[t].
	tensor.GatherRowsDotScale(sc.dY[:s*d], sc.dSlotGate[:s], dcomb, st.Y[:s*d], p.Token, p.Gate, d)
	// Under TP, Y is partial (dY is whole), so dSlotGate is partial too: it is
	// summed over TP together with dX below, in one all-reduce.
	tp := tpOf(st.Ex)
	if st.piped {
		st.pipeBackward(dw, w, dm, sc)
	} else {
		st.expertsBackward(dw, w, dm, sc)
	}
	if tp == 1 {
		tensor.ScatterAddRows(dxin, sc.dX[:s*d], p.Token, nil, d)
	} else { // partial over TP: sum per token, as in the forward
		sc.dxN = grow(sc.dxN, n*d+s)
		clear(sc.dxN[:n*d])
		tensor.ScatterAddRows(sc.dxN, sc.dX[:s*d], p.Token, nil, d)
		copy(sc.dxN[n*d:n*d+s], sc.dSlotGate[:s])
		st.Ex.SumTP(sc.dxN[:n*d+s])
		tensor.AddInPlace(dxin[:n*d], sc.dxN[:n*d])
		copy(sc.dSlotGate[:s], sc.dxN[n*d:n*d+s])
	}
	if w.Down != nil { // z = x·Downᵀ
		tensor.Gemm(false, false, n, dModel, d, sc.dZ, d, w.Down, dModel, 1, dx, dModel)
		tensor.Gemm(true, false, d, dModel, n, sc.dZ, d, x, dModel, 1, dw.Down, dModel)
		d = dModel
	}
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

// ascendBackward is ascend's backward under DCCA: it accumulates dw.Up,
// sets sc.dZout = dout·Up [N, R] (the gradient of the combined outputs),
// clears sc.dZ [N, R] (where the gradient of the down-projected inputs
// accumulates) and returns them and R. Without DCCA it returns dout, dx
// and d.
func (st *State) ascendBackward(dw Weights, dout, dx []float32, w Weights, d int, sc *Scratch) (dcomb, dxin []float32, width int) {
	if w.Down == nil {
		return dout, dx, d
	}
	n, r := st.N, w.inner(d)
	dzout, dz := lowRank(&sc.dZout, &sc.dZ, n*r)
	tensor.Gemm(false, false, n, r, d, dout, d, w.Up, r, 0, dzout, r)
	tensor.Gemm(true, false, d, r, n, dout, d, st.Zout, r, 1, dw.Up, r)
	return dzout, dz, r
}

// RoutedLoad is the number of token slots the router sent to each expert in
// the last Forward, before capacity: the signal for bias balancing.
func (st *State) RoutedLoad() []int { return st.Plan.Routed }

// expertsBackward turns the gated output gradients sc.dY (plan order) into
// the input gradients sc.dX on the unpipelined path, accumulating dw.
func (st *State) expertsBackward(dw, w Weights, dm Dims, sc *Scratch) {
	d, s := dm.D, st.Plan.Slots()
	xl, offs := st.local(d)
	rows := len(xl) / max(d, 1)
	dyl, dxl := sc.dY, sc.dX
	if st.ep {
		sc.dYL = grow(sc.dYL, rows*d)
		sc.dXL = grow(sc.dXL, rows*d)
		st.disp.forward(st.Ex, sc.dYL, sc.dY[:s*d], d)
		dyl, dxl = sc.dYL, sc.dXL
	}
	sc.dHact = grow(sc.dHact, rows*dm.H)
	sc.dHpre = grow(sc.dHpre, rows*dm.H)
	Experts{D: d, H: dm.H}.Backward(dxl, dw.W1, dw.W2, sc.dHact, sc.dHpre, dyl, xl, st.Hpre, st.Hact, w.W1, w.W2, offs)
	if st.ep {
		st.disp.backward(st.Ex, sc.dX[:s*d], dxl[:rows*d], d)
	}
}
