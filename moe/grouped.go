package moe

import "fmt"

// MoGE is the Mixture of Grouped Experts router (Pangu Pro MoE): the E
// experts form Groups equal blocks of consecutive experts (normally one per
// expert-parallel rank); scores are global over all E experts and each token
// takes its top-(K/Groups) experts inside every group, so every group (every
// EP rank) receives exactly N·K/Groups slots for any batch.
//
// Gates are the chosen global scores themselves, NOT renormalised over the K
// chosen: the paper sets the scores of unselected experts to zero and
// weights the selected experts' outputs by the remaining global softmax
// scores. The aux loss runs on the global scores as for top-k.
type MoGE struct {
	Groups int
	Opts   Options
}

// Name implements Router.
func (MoGE) Name() string { return "moge" }

// Options implements Router.
func (m MoGE) Options() Options { return m.Opts }

func (m MoGE) check(e, k int) error {
	if m.Groups < 1 || e%m.Groups != 0 {
		return fmt.Errorf("router moge: groups = %d must divide experts = %d", m.Groups, e)
	}
	if k%m.Groups != 0 {
		return fmt.Errorf("router moge: groups = %d must divide top_k = %d (each token takes top_k/groups experts per group)", m.Groups, k)
	}
	return nil
}

// Select implements Router: experts come group by group, each group's
// choices in descending key order (ties to the lower index).
func (m MoGE) Select(r *Routing) {
	n, e, k := r.N, r.E, r.K
	gs, kg := e/m.Groups, k/m.Groups
	for t := 0; t < n; t++ {
		p := r.Probs[t*e : (t+1)*e]
		ex := r.Experts[t*k : (t+1)*k]
		g := r.Gates[t*k : (t+1)*k]
		for grp := 0; grp < m.Groups; grp++ {
			scanTop(ex[grp*kg:(grp+1)*kg], 0, p, r.Bias, grp*gs, (grp+1)*gs)
		}
		for j, x := range ex {
			g[j] = p[x]
		}
	}
}

// Backward implements Router: gate_j = p_j, so ∂L/∂p_j = dg_j.
func (MoGE) Backward(dprobs, dgates []float32, r *Routing) {
	n, e, k := r.N, r.E, r.K
	for t := 0; t < n; t++ {
		dp := dprobs[t*e : (t+1)*e]
		for j, x := range r.Experts[t*k : (t+1)*k] {
			dp[x] += dgates[t*k+j]
		}
	}
}

// StaticGroupSplit is the number of slots each group (EP rank) receives from
// n tokens with k choices: n·k/Groups each, whatever the batch. An EP
// dispatcher may use it instead of exchanging counts (dropless only: with a
// capacity factor, drops make the per-group counts data-dependent).
func (m MoGE) StaticGroupSplit(n, k int) []int {
	out := make([]int, m.Groups)
	for i := range out {
		out[i] = n * k / m.Groups
	}
	return out
}

// GroupLimited is DeepSeek-V3's node-limited routing: the E experts form
// Groups equal blocks of consecutive experts; each group is ranked by the sum
// of its two highest selection keys (score + bias; the top one when a group
// has a single expert), the TopKGroups best groups are kept (ties to the lower
// group index) and the token takes its top-K experts inside them. Gates are
// the unbiased scores renormalised over the K chosen (V3 normalises its
// sigmoid scores this way; softmax scores are treated alike).
type GroupLimited struct {
	Groups, TopKGroups int
	Opts               Options
}

// Name implements Router.
func (GroupLimited) Name() string { return "group_limited" }

// Options implements Router.
func (gl GroupLimited) Options() Options { return gl.Opts }

func (gl GroupLimited) check(e, k int) error {
	if gl.Groups < 1 || e%gl.Groups != 0 {
		return fmt.Errorf("router group_limited: groups = %d must divide experts = %d", gl.Groups, e)
	}
	if gl.TopKGroups < 1 || gl.TopKGroups > gl.Groups {
		return fmt.Errorf("router group_limited: topk_groups = %d must be in [1, groups = %d]", gl.TopKGroups, gl.Groups)
	}
	if k > gl.TopKGroups*(e/gl.Groups) {
		return fmt.Errorf("router group_limited: top_k = %d exceeds the %d experts of topk_groups = %d groups", k, gl.TopKGroups*(e/gl.Groups), gl.TopKGroups)
	}
	return nil
}

// Select implements Router.
func (gl GroupLimited) Select(r *Routing) {
	n, e, k := r.N, r.E, r.K
	gs := e / gl.Groups
	var scoreBuf [64]float32
	var keepBuf [64]int32
	score, keep := scoreBuf[:], keepBuf[:]
	if gl.Groups > len(scoreBuf) {
		score, keep = make([]float32, gl.Groups), make([]int32, gl.Groups)
	}
	score, keep = score[:gl.Groups], keep[:gl.TopKGroups]
	for t := 0; t < n; t++ {
		p := r.Probs[t*e : (t+1)*e]
		ex := r.Experts[t*k : (t+1)*k]
		for grp := 0; grp < gl.Groups; grp++ {
			var top [2]int32
			scanTop(top[:min(2, gs)], 0, p, r.Bias, grp*gs, (grp+1)*gs)
			s := selKey(p, r.Bias, int(top[0]))
			if gs > 1 {
				s += selKey(p, r.Bias, int(top[1]))
			}
			score[grp] = s
		}
		scanTop(keep, 0, score, nil, 0, gl.Groups)
		sortInt32(keep)
		filled := 0
		for _, grp := range keep {
			filled = scanTop(ex, filled, p, r.Bias, int(grp)*gs, int(grp+1)*gs)
		}
		normalizeGates(r.Gates[t*k:(t+1)*k], p, ex)
	}
}

// Backward implements Router (renormalised gates, as TopK).
func (GroupLimited) Backward(dprobs, dgates []float32, r *Routing) {
	normalizedBackward(dprobs, dgates, r)
}

// sortInt32 sorts a short slice ascending (insertion sort, no allocation).
func sortInt32(s []int32) {
	for i := 1; i < len(s); i++ {
		v, j := s[i], i
		for j > 0 && s[j-1] > v {
			s[j] = s[j-1]
			j--
		}
		s[j] = v
	}
}
