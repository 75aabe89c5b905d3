package moe

// Aux is the Switch/GShard load-balancing loss of one layer,
// aux = E·Σ_e f_e·P_e, where f_e is the share of counted token slots routed
// to e (the router's choices, before any capacity drop) and P_e the mean
// router score of e over counted tokens (the softmax probability; with
// sigmoid scores the raw sigmoid, not renormalised over experts). Tokens
// with mask[t] false (padding) are left out of both statistics, so padding
// changes neither the loss nor its gradient.
//
// It is computed in two stages so that parallel layouts can use global
// statistics: Accumulate sums this rank's tokens into SlotSum, ProbSum and
// Count; a caller may all-reduce those three; Finish derives F, P and Value.
type Aux struct {
	SlotSum []float64 // [E] counted slots routed to each expert
	ProbSum []float64 // [E] Σ over counted tokens of the router probability
	Count   int       // counted tokens

	F, P  []float64 // [E] f_e and P_e (after Finish)
	Value float64   // aux (after Finish)
}

// Accumulate resets a and sums r's counted tokens (mask nil counts all), in
// token order in float64, so the sums are deterministic.
func (a *Aux) Accumulate(r *Routing, mask []bool) {
	n, e, k := r.N, r.E, r.K
	if cap(a.SlotSum) < e {
		a.SlotSum, a.ProbSum = make([]float64, e), make([]float64, e)
		a.F, a.P = make([]float64, e), make([]float64, e)
	}
	a.SlotSum, a.ProbSum, a.F, a.P = a.SlotSum[:e], a.ProbSum[:e], a.F[:e], a.P[:e]
	clear(a.SlotSum)
	clear(a.ProbSum)
	a.Count = 0
	for t := 0; t < n; t++ {
		if mask != nil && !mask[t] {
			continue
		}
		a.Count++
		for _, x := range r.Experts[t*k : (t+1)*k] {
			a.SlotSum[x]++
		}
		for i, p := range r.Probs[t*e : (t+1)*e] {
			a.ProbSum[i] += float64(p)
		}
	}
}

// Finish computes F, P and Value from the sums for k choices per token.
func (a *Aux) Finish(k int) {
	e := len(a.SlotSum)
	a.Value = 0
	clear(a.F)
	clear(a.P)
	if a.Count == 0 {
		return
	}
	for i := 0; i < e; i++ {
		a.F[i] = a.SlotSum[i] / float64(a.Count*k)
		a.P[i] = a.ProbSum[i] / float64(a.Count)
		a.Value += a.F[i] * a.P[i]
	}
	a.Value *= float64(e)
}

// ComputeAux is Accumulate then Finish over r alone (the serial case).
func ComputeAux(a *Aux, r *Routing, mask []bool) {
	a.Accumulate(r, mask)
	a.Finish(r.K)
}

// AuxBackward accumulates coef·∂aux/∂probs into dprobs [N, E]:
// coef·E·f_e/Count for every counted token of r (f_e is piecewise constant;
// with global statistics Count is the global count).
func AuxBackward(dprobs []float32, a *Aux, r *Routing, mask []bool, coef float64) {
	if a.Count == 0 || coef == 0 {
		return
	}
	e := r.E
	var buf [64]float32
	gs := buf[:0]
	if e > len(buf) {
		gs = make([]float32, e)
	} else {
		gs = buf[:e]
	}
	for i := range gs {
		gs[i] = float32(coef * float64(e) * a.F[i] / float64(a.Count))
	}
	for t := 0; t < r.N; t++ {
		if mask != nil && !mask[t] {
			continue
		}
		dp := dprobs[t*e : (t+1)*e]
		for i := range dp {
			dp[i] += gs[i]
		}
	}
}
