// Package moe is the mixture-of-experts machinery shared by the serial model
// and expert parallelism: routers (behind the Router interface), the dispatch
// plan that groups token slots by expert, the expert FFN as grouped GEMMs,
// the Switch/GShard auxiliary loss and load metrics.
package moe

import "fmt"

// Routing is one layer's routing decision for N tokens over E experts with K
// choices per token. Probs is the router softmax; Experts/Gates are the K
// chosen experts per token (in the router's order) and their combine weights.
type Routing struct {
	N, E, K int
	Probs   []float32 // [N, E] router probabilities (softmax of logits)
	Experts []int32   // [N, K] chosen experts, distinct within a row
	Gates   []float32 // [N, K] combine weights
}

// Resize sets the shape, reusing storage when it is large enough.
func (r *Routing) Resize(n, e, k int) {
	r.N, r.E, r.K = n, e, k
	r.Probs = grow(r.Probs, n*e)
	r.Experts = growInt32(r.Experts, n*k)
	r.Gates = grow(r.Gates, n*k)
}

// Router chooses experts and gates from router probabilities.
// Implementations must be deterministic (ties broken by lower expert index)
// and must not allocate per call.
type Router interface {
	// Select fills r.Experts and r.Gates from r.Probs.
	Select(r *Routing)
	// Backward accumulates into dprobs [N, E] the gradient of the loss with
	// respect to r.Probs through the gates, given dgates [N, K] (the
	// gradient with respect to r.Gates). Selection itself is piecewise
	// constant and has no gradient.
	Backward(dprobs, dgates []float32, r *Routing)
	// Name identifies the router in configs and logs.
	Name() string
}

// TopK routes each token to its K most probable experts with gates
// renormalised to sum to 1: gate_j = p_j / Σ_{i∈top} p_i.
type TopK struct{}

// Name implements Router.
func (TopK) Name() string { return "topk" }

// Select implements Router. Ties go to the lower expert index.
func (TopK) Select(r *Routing) {
	n, e, k := r.N, r.E, r.K
	for t := 0; t < n; t++ {
		p := r.Probs[t*e : (t+1)*e]
		ex := r.Experts[t*k : (t+1)*k]
		g := r.Gates[t*k : (t+1)*k]
		// Insertion into a descending top-k list; k is small.
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
		var sum float32
		for j := 0; j < k; j++ {
			sum += p[ex[j]]
		}
		for j := 0; j < k; j++ {
			g[j] = p[ex[j]] / sum
		}
	}
}

// Backward implements Router: with S = Σ_{i∈top} p_i and g_j = p_j/S,
// ∂L/∂p_j = (dg_j − Σ_i dg_i·g_i) / S for chosen j, 0 otherwise.
func (TopK) Backward(dprobs, dgates []float32, r *Routing) {
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

// NewRouter returns the router called name.
func NewRouter(name string) (Router, error) {
	switch name {
	case "topk", "":
		return TopK{}, nil
	}
	return nil, fmt.Errorf("unknown router %q (known: \"topk\")", name)
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
