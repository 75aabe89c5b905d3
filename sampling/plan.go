package sampling

import (
	"errors"
	"fmt"
)

// EpochPlan is one epoch of bucketed batches for every data-parallel rank:
// Steps[s][r] lists the example indices of rank r's batch at step s. All
// batches of a step come from the same bucket (Bucket[s]), so ranks take
// similar time; every example appears exactly once.
type EpochPlan struct {
	Epoch  uint64
	Steps  [][][]int
	Bucket []int
}

// Planner forms an epoch's dynamic batches from a Dataset and Buckets.
type Planner struct {
	ds          *Dataset
	bk          *Buckets
	budget      float64
	q           float64
	maxExamples int
	byBucket    [][]int // example indices per flat bucket, ascending
}

// NewPlanner checks that the budget holds one example of every length in ds.
// budget bounds count × cost(longest) per batch, cost(L) = L + L²/q (q = 0:
// just L); maxExamples caps a batch's count (0 = no cap), and so does
// bk.MaxCount per bucket when set.
func NewPlanner(ds *Dataset, bk *Buckets, budget int, q float64, maxExamples int) (*Planner, error) {
	if ds == nil || len(ds.Examples) == 0 {
		return nil, errors.New("planner: empty dataset")
	}
	if len(bk.Upper) == 0 {
		return nil, errors.New("planner: no buckets")
	}
	if bk.MaxCount != nil && len(bk.MaxCount) != bk.N() {
		return nil, fmt.Errorf("planner: %d bucket batch sizes for %d buckets", len(bk.MaxCount), bk.N())
	}
	p := &Planner{ds: ds, bk: bk, budget: float64(budget), q: q, maxExamples: maxExamples}
	p.byBucket = make([][]int, bk.N())
	sizes := make([]int, bk.N()) // counted first so each list is allocated once
	for _, e := range ds.Examples {
		sizes[bk.Index(e)]++
	}
	for b, n := range sizes {
		p.byBucket[b] = make([]int, 0, n)
	}
	longest := 0
	for i, e := range ds.Examples {
		b := bk.Index(e)
		p.byBucket[b] = append(p.byBucket[b], i)
		longest = max(longest, e.Len)
	}
	if c := exampleCost(longest, q); c > p.budget {
		return nil, fmt.Errorf("planner: budget %d cannot hold one example of %d positions (cost %.0f)", budget, longest, c)
	}
	return p, nil
}

// BucketSizes returns the number of examples in each flat bucket.
func (p *Planner) BucketSizes() []int {
	out := make([]int, len(p.byBucket))
	for i, b := range p.byBucket {
		out[i] = len(b)
	}
	return out
}

func (p *Planner) capOf(bucket int) int {
	c := p.maxExamples
	if p.bk.MaxCount != nil {
		if m := p.bk.MaxCount[bucket]; c == 0 || m < c {
			c = m
		}
	}
	return c
}

// cut forms batches greedily in pool order: an example joins the open batch
// while (count+1) × cost(longest) stays within the budget and the cap allows.
func (p *Planner) cut(pool []int, capacity int) [][]int {
	var out [][]int
	var cur []int
	longest := 0
	for _, id := range pool {
		l := p.ds.Examples[id].Len
		nl := max(longest, l)
		if len(cur) > 0 && (float64(len(cur)+1)*exampleCost(nl, p.q) > p.budget || (capacity > 0 && len(cur) >= capacity)) {
			out = append(out, cur)
			cur, nl = nil, l
		}
		cur = append(cur, id)
		longest = nl
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// splitTo splits the batches with the most examples in halves until there are
// target batches; it reports false when every batch is down to one example.
func splitTo(batches [][]int, target int) ([][]int, bool) {
	for len(batches) < target {
		best := 0
		for i, b := range batches {
			if len(b) > len(batches[best]) {
				best = i
			}
		}
		b := batches[best]
		if len(b) < 2 {
			return batches, false
		}
		h := len(b) / 2
		batches = append(batches, nil)
		copy(batches[best+2:], batches[best+1:])
		batches[best], batches[best+1] = b[:h:h], b[h:]
	}
	return batches, true
}

// Plan returns the batches of one epoch for dp ranks. It depends only on
// (seed, epoch, dp) and the data and configuration, never on earlier epochs.
//
// Buckets are taken in ascending order; each one's examples, shuffled by
// (seed, epoch, bucket), are cut into batches. Batches are grouped into steps
// of dp batches; the examples of a bucket's last step that is incomplete or
// holds its (usually underfilled) last batch move on to the next (longer)
// bucket, so no example is dropped or repeated and every
// step is drawn from one bucket. The last bucket splits its largest batches
// until its batch count is a multiple of dp (taking back earlier steps'
// examples if needed). Finally the order of the steps is shuffled by (seed,
// epoch).
func (p *Planner) Plan(seed, epoch uint64, dp int) (*EpochPlan, error) {
	if dp <= 0 {
		return nil, fmt.Errorf("plan: dp size %d, want > 0", dp)
	}
	type group struct {
		bucket  int
		batches [][]int
	}
	var groups []group
	var carry []int
	last := len(p.byBucket) - 1
	for b := 0; b <= last; b++ {
		ids := append([]int(nil), p.byBucket[b]...)
		r := rng{s: mix(seed, purposeBucketShuffle, epoch, uint64(b))}
		r.shuffle(ids)
		pool := append(carry, ids...)
		carry = nil
		if len(pool) == 0 {
			continue
		}
		batches := p.cut(pool, p.capOf(b))
		if b < last {
			// The last batch is usually underfilled: carry it too, so only
			// the final bucket can end with a partial batch.
			full := (len(batches) - 1) / dp * dp
			for _, bt := range batches[full:] {
				carry = append(carry, bt...)
			}
			for i := 0; i < full; i += dp {
				groups = append(groups, group{b, batches[i : i+dp]})
			}
			continue
		}
		for {
			target := (len(batches) + dp - 1) / dp * dp
			var ok bool
			if batches, ok = splitTo(batches, target); ok {
				break
			}
			if len(groups) == 0 {
				return nil, fmt.Errorf("plan: %d examples cannot fill an equal number of non-empty batches on each of %d data-parallel ranks under budget %.0f (raise the budget or lower the DP size)", len(p.ds.Examples), dp, p.budget)
			}
			g := groups[len(groups)-1]
			groups = groups[:len(groups)-1]
			var back []int
			for _, bt := range g.batches {
				back = append(back, bt...)
			}
			pool = append(back, pool...)
			batches = p.cut(pool, p.capOf(b))
		}
		for i := 0; i < len(batches); i += dp {
			groups = append(groups, group{b, batches[i : i+dp]})
		}
	}
	r := rng{s: mix(seed, purposeStepShuffle, epoch)}
	order := make([]int, len(groups))
	for i := range order {
		order[i] = i
	}
	r.shuffle(order)
	plan := &EpochPlan{Epoch: epoch, Steps: make([][][]int, len(groups)), Bucket: make([]int, len(groups))}
	for s, gi := range order {
		plan.Steps[s] = groups[gi].batches
		plan.Bucket[s] = groups[gi].bucket
	}
	return plan, nil
}

// Cost returns count × cost(longest) of a batch of example indices.
func (p *Planner) Cost(ids []int) float64 {
	longest := 0
	for _, id := range ids {
		longest = max(longest, p.ds.Examples[id].Len)
	}
	return float64(len(ids)) * exampleCost(longest, p.q)
}

// Batch materialises the examples ids as a Batch: B = len(ids) rows of T =
// the longest Len positions, padded on the right (Targets -1). Two-length
// examples have targets on their output predictions only.
func (d *Dataset) Batch(ids []int) (Batch, error) {
	if len(ids) == 0 {
		return Batch{}, errors.New("batch: no examples")
	}
	t := 0
	for _, id := range ids {
		if id < 0 || id >= len(d.Examples) {
			return Batch{}, fmt.Errorf("batch: example %d out of range [0,%d)", id, len(d.Examples))
		}
		e := d.Examples[id]
		if e.Tokens == nil && d.src == nil {
			return Batch{}, fmt.Errorf("batch: dataset %s has lengths only (no text) and cannot be trained on", d.Name)
		}
		t = max(t, e.Len)
	}
	b := newBatch(len(ids), t, false)
	var buf []int32
	for r, id := range ids {
		e := d.Examples[id]
		toks := e.Tokens
		if toks == nil {
			buf = d.src.appendTokens(buf[:0], e.Doc, e.Off, e.Off+e.Len+1)
			toks = buf
		}
		row := r * t
		for j := 0; j < e.Len; j++ {
			b.Tokens[row+j] = toks[j]
			if j+1 >= e.In {
				b.Targets[row+j] = toks[j+1]
			}
		}
	}
	return b, nil
}
