package moe

// Plan is a dispatch plan: the N·K token slots of a Routing grouped by
// expert. Slots of expert e are [Offsets[e], Offsets[e+1]), in increasing
// token order (a stable counting sort), so the plan is deterministic. Expert
// parallelism ships exactly this (counts per expert, token rows) with
// all-to-all-v.
type Plan struct {
	E       int
	Counts  []int     // [E] slots per expert
	Offsets []int     // [E+1] prefix sums of Counts
	Token   []int32   // [S] token index of each slot
	Gate    []float32 // [S] combine weight of each slot
	SlotOf  []int32   // [N, K] slot of token t's j-th choice
}

// Slots is the number of token slots (N·K).
func (p *Plan) Slots() int { return len(p.Token) }

// Build fills the plan from r, reusing storage.
func (p *Plan) Build(r *Routing) {
	n, e, k := r.N, r.E, r.K
	p.E = e
	if cap(p.Counts) < e {
		p.Counts = make([]int, e)
		p.Offsets = make([]int, e+1)
	}
	p.Counts, p.Offsets = p.Counts[:e], p.Offsets[:e+1]
	p.Token = growInt32(p.Token, n*k)
	p.Gate = grow(p.Gate, n*k)
	p.SlotOf = growInt32(p.SlotOf, n*k)
	clear(p.Counts)
	for _, x := range r.Experts[:n*k] {
		p.Counts[x]++
	}
	p.Offsets[0] = 0
	for i := 0; i < e; i++ {
		p.Offsets[i+1] = p.Offsets[i] + p.Counts[i]
	}
	// Reuse Counts as running cursors, then restore.
	next := p.Counts
	copy(next, p.Offsets[:e])
	for t := 0; t < n; t++ {
		for j := 0; j < k; j++ {
			x := r.Experts[t*k+j]
			s := next[x]
			next[x]++
			p.Token[s] = int32(t)
			p.Gate[s] = r.Gates[t*k+j]
			p.SlotOf[t*k+j] = int32(s)
		}
	}
	for i := 0; i < e; i++ {
		p.Counts[i] = p.Offsets[i+1] - p.Offsets[i]
	}
}
