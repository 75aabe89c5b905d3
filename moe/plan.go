package moe

import "slices"

// Plan is a dispatch plan: the kept token slots of a Routing grouped by
// expert. Slots of expert e are [Offsets[e], Offsets[e+1]), in increasing
// token order (a stable counting sort), so the plan is deterministic. Expert
// parallelism ships exactly this (counts per expert, token rows) with
// all-to-all-v. Dropless plans keep all N·K slots; with a capacity, slots
// over an expert's capacity are dropped: they get no row, SlotOf −1, and
// contribute nothing to the output (the residual passes the token through).
type Plan struct {
	E       int
	Counts  []int     // [E] kept slots per expert
	Offsets []int     // [E+1] prefix sums of Counts
	Routed  []int     // [E] slots the router chose per expert (before capacity)
	Dropped int       // slots dropped by the capacity
	Token   []int32   // [S] token index of each kept slot
	Gate    []float32 // [S] combine weight of each kept slot
	SlotOf  []int32   // [N, K] slot of token t's j-th choice, −1 if dropped

	keep  []bool  // [N, K] scratch: choice kept
	order []int32 // [N, K] scratch: choices grouped by expert
}

// Slots is the number of kept token slots (N·K when dropless).
func (p *Plan) Slots() int { return len(p.Token) }

// Build fills a dropless plan from r, reusing storage.
func (p *Plan) Build(r *Routing) { p.BuildCapacity(r, -1, DropProbability) }

// BuildCapacity fills the plan from r keeping at most capacity slots per
// expert (capacity < 0: dropless), choosing the dropped ones by policy:
// DropPosition drops the later tokens; DropProbability drops the lowest
// router scores r.Probs[t, e] first, the later token first among equal ones.
func (p *Plan) BuildCapacity(r *Routing, capacity int, policy DropPolicy) {
	n, e, k := r.N, r.E, r.K
	p.E = e
	if cap(p.Counts) < e {
		p.Counts = make([]int, e)
		p.Offsets = make([]int, e+1)
		p.Routed = make([]int, e)
	}
	p.Counts, p.Offsets, p.Routed = p.Counts[:e], p.Offsets[:e+1], p.Routed[:e]
	p.SlotOf = growInt32(p.SlotOf, n*k)
	if cap(p.keep) < n*k {
		p.keep = make([]bool, n*k)
	}
	keep := p.keep[:n*k]
	choices := r.Experts[:n*k]
	clear(p.Routed)
	for _, x := range choices {
		p.Routed[x]++
	}
	switch {
	case capacity < 0:
		for i := range keep {
			keep[i] = true
		}
	case policy == DropPosition:
		clear(p.Counts)
		for i, x := range choices {
			keep[i] = p.Counts[x] < capacity
			p.Counts[x]++
		}
	default:
		p.keepByScore(r, capacity)
	}
	clear(p.Counts)
	for i, x := range choices {
		if keep[i] {
			p.Counts[x]++
		}
	}
	p.Offsets[0] = 0
	for i := 0; i < e; i++ {
		p.Offsets[i+1] = p.Offsets[i] + p.Counts[i]
	}
	s := p.Offsets[e]
	p.Dropped = n*k - s
	p.Token = growInt32(p.Token, s)
	p.Gate = grow(p.Gate, s)
	// Reuse Counts as running cursors, then restore.
	next := p.Counts
	copy(next, p.Offsets[:e])
	for t := 0; t < n; t++ {
		for j := 0; j < k; j++ {
			if !keep[t*k+j] {
				p.SlotOf[t*k+j] = -1
				continue
			}
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

// keepByScore marks in p.keep, for every expert over capacity, its capacity
// highest-scoring choices (earlier token first on ties); all others are kept.
func (p *Plan) keepByScore(r *Routing, capacity int) {
	n, e, k := r.N, r.E, r.K
	p.order = growInt32(p.order, n*k)
	// Group the choice indices by expert in token order (Offsets as cursors).
	p.Offsets[0] = 0
	for i := 0; i < e; i++ {
		p.Offsets[i+1] = p.Offsets[i] + p.Routed[i]
	}
	next := p.Counts
	copy(next, p.Offsets[:e])
	for i, x := range r.Experts[:n*k] {
		p.order[next[x]] = int32(i)
		next[x]++
	}
	for x := 0; x < e; x++ {
		seg := p.order[p.Offsets[x]:p.Offsets[x+1]]
		if len(seg) > capacity {
			score := func(c int32) float32 { return r.Probs[int(c)/k*e+x] }
			slices.SortStableFunc(seg, func(a, b int32) int {
				sa, sb := score(a), score(b)
				switch {
				case sa > sb:
					return -1
				case sa < sb:
					return 1
				}
				return 0
			})
		}
		for j, c := range seg {
			p.keep[c] = j < capacity
		}
	}
}
