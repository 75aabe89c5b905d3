// Package moe is the mixture-of-experts machinery shared by the serial model
// and expert parallelism: routers (behind the Router interface), the dispatch
// plan that groups token slots by expert, capacity and drop policies, the
// expert FFN as grouped GEMMs, the Switch/GShard auxiliary loss, the router
// z-loss, aux-loss-free bias balancing and load metrics.
//
// It imports only package tensor and must not communicate by itself: the
// expert- and tensor-parallel exchanges of a layer go through the Exchange
// interface, which the parallel plan implements. Design:
// docs/algorithms/moe-dispatch.md, docs/algorithms/moge.md,
// docs/algorithms/bias-balancing.md.
package moe

import "fmt"

// Routing is one layer's routing decision for N tokens over E experts with K
// choices per token. Probs holds the router scores (softmax or sigmoid of the
// logits, see Options.Score); Experts/Gates are the K chosen experts per
// token (in the router's order) and their combine weights.
type Routing struct {
	N, E, K int
	Probs   []float32 // [N, E] router scores
	Experts []int32   // [N, K] chosen experts, distinct within a row
	Gates   []float32 // [N, K] combine weights
	// Bias (nil = none) is the aux-loss-free balancing bias [E]: it is added
	// to Probs for selection only; gates always come from the unbiased
	// scores, so the bias carries no gradient.
	Bias []float32
}

// Resize sets the shape, reusing storage when it is large enough.
func (r *Routing) Resize(n, e, k int) {
	r.N, r.E, r.K = n, e, k
	r.Probs = grow(r.Probs, n*e)
	r.Experts = growInt32(r.Experts, n*k)
	r.Gates = grow(r.Gates, n*k)
}

// Router chooses experts and gates from router scores.
// Implementations must be deterministic (ties broken by lower expert index)
// and must not allocate per call (except for more than 64 groups).
type Router interface {
	// Select fills r.Experts and r.Gates from r.Probs (+ r.Bias for the
	// choice only).
	Select(r *Routing)
	// Backward accumulates into dprobs [N, E] the gradient of the loss with
	// respect to r.Probs through the gates, given dgates [N, K] (the
	// gradient with respect to r.Gates). Selection itself is piecewise
	// constant and has no gradient.
	Backward(dprobs, dgates []float32, r *Routing)
	// Name identifies the router in configs and logs.
	Name() string
	// Options are the layer-level settings the router runs with.
	Options() Options
}

// Score is the function that turns router logits into scores.
type Score int

const (
	// Softmax over the E experts of a token (the zero value).
	Softmax Score = iota
	// Sigmoid of each logit on its own (DeepSeek-V3).
	Sigmoid
)

var scoreNames = configNames[Score]{"score", []string{Softmax: "softmax", Sigmoid: "sigmoid"}}

// ParseScore maps a config name ("softmax", "sigmoid"; "" = softmax).
func ParseScore(s string) (Score, error) { return scoreNames.parse(s) }

// String is the config name.
func (s Score) String() string { return scoreNames.name(s) }

// DropPolicy decides which slots an over-capacity expert drops.
type DropPolicy int

const (
	// DropProbability drops the slots with the lowest router score first
	// (ties: the later token first). The zero value.
	DropProbability DropPolicy = iota
	// DropPosition drops the later tokens first.
	DropPosition
)

var dropPolicyNames = configNames[DropPolicy]{"drop policy", []string{DropProbability: "probability", DropPosition: "position"}}

// ParseDropPolicy maps a config name ("probability", "position"; "" =
// probability).
func ParseDropPolicy(s string) (DropPolicy, error) { return dropPolicyNames.parse(s) }

// String is the config name.
func (p DropPolicy) String() string { return dropPolicyNames.name(p) }

// Options are the layer-level router settings. The zero value is the
// reference behaviour: softmax scores, no z-loss, dropless.
type Options struct {
	Score Score
	// ZLossCoef weights the router z-loss (ST-MoE): the loss term is
	// ZLossCoef · mean over counted tokens of logsumexp(logits)².
	ZLossCoef float64
	// CapacityFactor C > 0 caps every expert at ceil(C·N·K/E) slots of the
	// N tokens of one forward; 0 is dropless.
	CapacityFactor float64
	Drop           DropPolicy
	// Exchange shapes the expert-parallel exchange (ignored on one rank).
	Exchange ExchangeOptions
}

// Capacity is the per-expert slot limit for n tokens, or -1 when dropless.
func (o Options) Capacity(n, e, k int) int {
	if o.CapacityFactor <= 0 {
		return -1
	}
	c := o.CapacityFactor * float64(n*k) / float64(e)
	ci := int(c)
	if float64(ci) < c {
		ci++
	}
	return ci
}

func (o Options) validate() error {
	if !(o.ZLossCoef >= 0 && o.ZLossCoef < 1e6) {
		return fmt.Errorf("z-loss coefficient %g: must be a finite value >= 0", o.ZLossCoef)
	}
	if !(o.CapacityFactor >= 0 && o.CapacityFactor < 1e6) {
		return fmt.Errorf("capacity factor %g: must be 0 (dropless) or a finite value > 0", o.CapacityFactor)
	}
	if err := o.Exchange.validate(); err != nil {
		return err
	}
	return nil
}

// TopK routes each token to its K highest-scoring experts with gates
// renormalised to sum to 1: gate_j = p_j / Σ_{i∈top} p_i.
type TopK struct {
	Opts Options
}

// Name implements Router.
func (TopK) Name() string { return "topk" }

// Options implements Router.
func (t TopK) Options() Options { return t.Opts }

// Select implements Router. Ties go to the lower expert index.
func (TopK) Select(r *Routing) {
	n, e, k := r.N, r.E, r.K
	for t := 0; t < n; t++ {
		p := r.Probs[t*e : (t+1)*e]
		ex := r.Experts[t*k : (t+1)*k]
		if r.Bias == nil {
			topUnbiased(ex, p)
		} else {
			scanTop(ex, 0, p, r.Bias, 0, e)
		}
		normalizeGates(r.Gates[t*k:(t+1)*k], p, ex)
	}
}

// Backward implements Router (see normalizedBackward).
func (TopK) Backward(dprobs, dgates []float32, r *Routing) {
	normalizedBackward(dprobs, dgates, r)
}

// Spec is a router as a job configures it.
type Spec struct {
	Kind       string // "topk" (or ""), "moge", "group_limited"
	Groups     int    // expert groups (moge, group_limited); 0 means 1
	TopKGroups int    // group_limited: groups kept per token; 0 means all
	Opts       Options
}

// New builds the router spec describes for e experts and k choices, or an
// error naming the offending setting.
func New(spec Spec, e, k int) (Router, error) {
	if e < 1 || k < 1 || k > e {
		return nil, fmt.Errorf("router: %d experts with top-%d: need 1 <= k <= experts", e, k)
	}
	if err := spec.Opts.validate(); err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	g := spec.Groups
	if g == 0 {
		g = 1
	}
	switch spec.Kind {
	case "topk", "":
		return TopK{Opts: spec.Opts}, nil
	case "moge":
		m := MoGE{Groups: g, Opts: spec.Opts}
		if err := m.check(e, k); err != nil {
			return nil, err
		}
		return m, nil
	case "group_limited":
		tg := spec.TopKGroups
		if tg == 0 {
			tg = g
		}
		gl := GroupLimited{Groups: g, TopKGroups: tg, Opts: spec.Opts}
		if err := gl.check(e, k); err != nil {
			return nil, err
		}
		return gl, nil
	}
	return nil, fmt.Errorf("unknown router %q (known: \"topk\", \"moge\", \"group_limited\")", spec.Kind)
}

// NewRouter returns the router called name with default options; only
// "topk" needs no further settings (use New for the others).
func NewRouter(name string) (Router, error) {
	switch name {
	case "topk", "":
		return TopK{}, nil
	case "moge", "group_limited":
		return nil, fmt.Errorf("router %q needs its group settings: build it with moe.New(Spec, experts, k) (model.NewRouter(cfg))", name)
	}
	return nil, fmt.Errorf("unknown router %q (known: \"topk\", \"moge\", \"group_limited\")", name)
}

// pushTop inserts expert i into the descending top list ex[:filled] (capacity
// len(ex)) by selection key p[i]+b[i] (p[i] when b is nil), keeping the
// earlier-pushed expert first on ties; it returns the new fill count.
func pushTop(ex []int32, filled int, p, b []float32, i int) int {
	k := len(ex)
	v := selKey(p, b, i)
	if filled == k && !(v > selKey(p, b, int(ex[k-1]))) {
		return filled
	}
	j := filled
	if filled < k {
		filled++
	} else {
		j = k - 1
	}
	for j > 0 && v > selKey(p, b, int(ex[j-1])) {
		ex[j] = ex[j-1]
		j--
	}
	ex[j] = int32(i)
	return filled
}

// topUnbiased fills ex with the len(ex) highest scores of p in descending
// order, ties to the lower index: scanTop without a bias, kept as a plain
// insertion loop because it is the reference router's hot path.
func topUnbiased(ex []int32, p []float32) {
	k := len(ex)
	filled := 0
	for i, v := range p {
		if filled == k && !(v > p[ex[k-1]]) {
			continue
		}
		j := filled
		if filled < k {
			filled++
		} else {
			j = k - 1
		}
		for j > 0 && v > p[ex[j-1]] {
			ex[j] = ex[j-1]
			j--
		}
		ex[j] = int32(i)
	}
}

// scanTop pushes experts lo..hi-1 in order into the top list ex[:filled]
// (see pushTop) and returns the new fill count. Once the list is full, an
// expert is compared with the current threshold only.
func scanTop(ex []int32, filled int, p, b []float32, lo, hi int) int {
	k := len(ex)
	var thr float32
	if filled == k {
		thr = selKey(p, b, int(ex[k-1]))
	}
	for i := lo; i < hi; i++ {
		if filled == k {
			// The unbiased case reads p directly (the hot path).
			if b == nil {
				if !(p[i] > thr) {
					continue
				}
			} else if !(p[i]+b[i] > thr) {
				continue
			}
		}
		filled = pushTop(ex, filled, p, b, i)
		if filled == k {
			thr = selKey(p, b, int(ex[k-1]))
		}
	}
	return filled
}

func selKey(p, b []float32, i int) float32 {
	if b == nil {
		return p[i]
	}
	return p[i] + b[i]
}

// normalizeGates sets g_j = p[ex_j] / Σ_i p[ex_i].
func normalizeGates(g, p []float32, ex []int32) {
	var sum float32
	for _, x := range ex {
		sum += p[x]
	}
	for j, x := range ex {
		g[j] = p[x] / sum
	}
}

// normalizedBackward is the gradient of renormalised gates: with
// S = Σ_{i∈chosen} p_i and g_j = p_j/S, ∂L/∂p_j = (dg_j − Σ_i dg_i·g_i) / S
// for chosen j, 0 otherwise.
func normalizedBackward(dprobs, dgates []float32, r *Routing) {
	n, e, k := r.N, r.E, r.K
	for t := 0; t < n; t++ {
		p := r.Probs[t*e : (t+1)*e]
		ex := r.Experts[t*k : (t+1)*k]
		g := r.Gates[t*k : (t+1)*k]
		dg := dgates[t*k : (t+1)*k]
		var sum, dot float32
		for j := 0; j < k; j++ {
			sum += p[ex[j]]
			dot += dg[j] * g[j]
		}
		dp := dprobs[t*e : (t+1)*e]
		for j := 0; j < k; j++ {
			dp[ex[j]] += (dg[j] - dot) / sum
		}
	}
}

func grow(s []float32, n int) []float32 {
	if cap(s) < n {
		return make([]float32, n)
	}
	return s[:n]
}

func growInt32(s []int32, n int) []int32 {
	if cap(s) < n {
		return make([]int32, n)
	}
	return s[:n]
}
