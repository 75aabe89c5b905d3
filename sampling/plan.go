package sampling

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
)

// EpochPlan is one epoch of bucketed batches for every data-parallel rank:
// Batch(s, r) lists the example indices of rank r's batch at step s. All
// batches of a step come from the same bucket (StepBucket(s)), so ranks take
// similar time; every example appears exactly once.
//
// A data set of more than the planner's window of examples is planned in
// shuffle windows (docs/dataset-format.md#bucket-mode-plans-in-shuffle-windows):
// its examples, in blocks of planBlock consecutive indices, are shuffled by
// (seed, epoch) and dealt into windows of about equal size; each window is
// bucketed and cut on its own and its steps follow the previous window's.
// Only one window's plan is held, so memory does not grow with the data;
// a window is planned again when a step outside the held one is asked for.
// With one window (the usual case below millions of examples) the plan is
// the whole-data plan.
//
// A window's plan is stored compactly, 4 bytes per example plus 4 per batch
// and per step: every batch is a contiguous range of its bucket's pool (the
// examples carried in from the previous bucket, then the bucket's shuffled
// examples), so a plan keeps the pools and the batch boundaries, not a list
// per batch. Batch and StepBucket may replace the held window: an EpochPlan
// is not safe for concurrent use.
type EpochPlan struct {
	Epoch uint64
	dp    int
	p     *Planner
	seed  uint64
	// blocks is the epoch's shuffled block order (nil: one window)
	blocks []uint32
	ends   []int // ends[w] = steps of windows 0..w
	held   int   // the window cur plans
	cur    *windowPlan
}

// windowPlan is one window's batches.
type windowPlan struct {
	buckets []bucketPlan // buckets with at least one step, ascending
	order   []uint32     // order[s] = group of step s (groups numbered in bucket order)
}

// bucketPlan is one bucket's share of a plan: pool position p is prefix[p]
// for p < len(prefix), then seg[p-len(prefix)]; batch k is pool positions
// [bounds[k], bounds[k+1]); group g (steps) is batches [g×dp, (g+1)×dp).
type bucketPlan struct {
	bucket      int
	prefix, seg []int32
	bounds      []uint32
	firstGroup  int // number of groups of the earlier buckets
}

func (b *bucketPlan) at(p int) int {
	if p < len(b.prefix) {
		return int(b.prefix[p])
	}
	return int(b.seg[p-len(b.prefix)])
}

func (b *bucketPlan) poolLen() int { return len(b.prefix) + len(b.seg) }

// NumSteps is the number of steps of the epoch.
func (p *EpochPlan) NumSteps() int { return p.ends[len(p.ends)-1] }

// NumWindows is the number of shuffle windows the epoch is planned in.
func (p *EpochPlan) NumWindows() int { return len(p.ends) }

// group returns the bucket plan and local group of step s.
func (p *EpochPlan) group(s int) (*bucketPlan, int) {
	w := sort.SearchInts(p.ends, s+1)
	if w != p.held {
		wp, err := p.p.planWindow(p.seed, p.Epoch, p.dp, p.blocks, w, len(p.ends))
		if err != nil {
			// The same window planned without error when the epoch was made.
			panic(fmt.Sprintf("sampling: window %d of epoch %d no longer plans: %v", w, p.Epoch, err))
		}
		p.cur, p.held = wp, w
	}
	if w > 0 {
		s -= p.ends[w-1]
	}
	wp := p.cur
	g := int(wp.order[s])
	i := sort.Search(len(wp.buckets), func(i int) bool { return wp.buckets[i].firstGroup > g }) - 1
	return &wp.buckets[i], g - wp.buckets[i].firstGroup
}

// StepBucket is the flat bucket of step s's batches.
func (p *EpochPlan) StepBucket(s int) int {
	b, _ := p.group(s)
	return b.bucket
}

// Batch returns the example indices of rank r's batch at step s.
func (p *EpochPlan) Batch(s, r int) []int {
	b, g := p.group(s)
	k := g*p.dp + r
	out := make([]int, 0, b.bounds[k+1]-b.bounds[k])
	for q := b.bounds[k]; q < b.bounds[k+1]; q++ {
		out = append(out, b.at(int(q)))
	}
	return out
}

// Planner forms an epoch's dynamic batches from a Dataset and Buckets.
type Planner struct {
	ds          *Dataset
	bk          *Buckets
	budget      float64
	q           float64
	maxExamples int
	sizes       []int // examples per flat bucket
	window      int   // examples per shuffle window (see EpochPlan)
}

// DefaultPlanWindow is the number of examples a plan holds at once: data
// sets up to this size are planned whole (8 MB of plan); larger ones in
// shuffle windows of about this size.
const DefaultPlanWindow = 1 << 21

// planBlock is the number of consecutive examples that move together when
// a large data set is dealt into shuffle windows: the block order costs 4
// bytes per block, and the bucket shuffle inside a window separates a
// block's examples again.
const planBlock = 64

// NewPlanner checks that the budget holds one example of every length in ds.
// budget bounds count × cost(longest) per batch, cost(L) = L + L²/q (q = 0:
// just L); maxExamples caps a batch's count (0 = no cap), and so does
// bk.MaxCount per bucket when set.
func NewPlanner(ds *Dataset, bk *Buckets, budget int, q float64, maxExamples int) (*Planner, error) {
	if ds == nil || ds.NumExamples() == 0 {
		return nil, errors.New("planner: empty dataset")
	}
	if ds.NumExamples() > math.MaxInt32 {
		return nil, fmt.Errorf("planner: %d examples, more than the %d a plan addresses", ds.NumExamples(), math.MaxInt32)
	}
	if len(bk.Upper) == 0 {
		return nil, errors.New("planner: no buckets")
	}
	if bk.MaxCount != nil && len(bk.MaxCount) != bk.N() {
		return nil, fmt.Errorf("planner: %d bucket batch sizes for %d buckets", len(bk.MaxCount), bk.N())
	}
	p := &Planner{ds: ds, bk: bk, budget: float64(budget), q: q, maxExamples: maxExamples, window: DefaultPlanWindow}
	p.sizes = make([]int, bk.N())
	longest := 0
	ds.Each(func(_ int, e Example) {
		p.sizes[bk.Index(e)]++
		longest = max(longest, e.Len)
	})
	if c := exampleCost(longest, q); c > p.budget {
		return nil, fmt.Errorf("planner: budget %d cannot hold one example of %d positions (cost %.0f)", budget, longest, c)
	}
	return p, nil
}

// BucketSizes returns the number of examples in each flat bucket.
func (p *Planner) BucketSizes() []int { return append([]int(nil), p.sizes...) }

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
// It returns the batches' boundaries in the pool (first 0, last poolLen),
// counted first so the list is allocated once, with room for spare more.
func (p *Planner) cut(b *bucketPlan, capacity, spare int) []uint32 {
	n := 0
	p.scan(b, capacity, func(int) { n++ })
	bounds := make([]uint32, 1, n+1+spare)
	p.scan(b, capacity, func(q int) { bounds = append(bounds, uint32(q)) })
	return bounds
}

// scan calls end with the pool position after each batch of cut.
func (p *Planner) scan(b *bucketPlan, capacity int, end func(q int)) {
	n, longest := 0, 0 // open batch: examples, longest Len
	for q := range b.poolLen() {
		l := p.ds.exLen(b.at(q))
		nl := max(longest, l)
		if n > 0 && (float64(n+1)*exampleCost(nl, p.q) > p.budget || (capacity > 0 && n >= capacity)) {
			end(q)
			n, nl = 0, l
		}
		n++
		longest = nl
	}
	if n > 0 {
		end(b.poolLen())
	}
}

// splitTo splits the batches with the most examples in halves (the first
// half keeps the smaller part) until there are target batches; it reports
// false when every batch is down to one example.
func splitTo(bounds []uint32, target int) ([]uint32, bool) {
	for len(bounds)-1 < target {
		best := 0
		for i := 1; i+1 < len(bounds); i++ {
			if bounds[i+1]-bounds[i] > bounds[best+1]-bounds[best] {
				best = i
			}
		}
		size := bounds[best+1] - bounds[best]
		if size < 2 {
			return bounds, false
		}
		bounds = slices.Insert(bounds, best+1, bounds[best]+size/2)
	}
	return bounds, true
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
// epoch). A data set larger than the planner's window goes through these
// steps once per shuffle window (see EpochPlan), the windows' steps one
// window after the other.
func (p *Planner) Plan(seed, epoch uint64, dp int) (*EpochPlan, error) {
	if dp <= 0 {
		return nil, fmt.Errorf("plan: dp size %d, want > 0", dp)
	}
	n := p.ds.NumExamples()
	plan := &EpochPlan{Epoch: epoch, dp: dp, p: p, seed: seed}
	nw := 1
	if n > p.window {
		nb := (n + planBlock - 1) / planBlock
		nw = min((n+p.window-1)/p.window, nb)
		plan.blocks = make([]uint32, nb)
		for i := range plan.blocks {
			plan.blocks[i] = uint32(i)
		}
		r := rng{s: mix(seed, purposeWindowDeal, epoch)}
		shuffleOf(&r, plan.blocks)
	}
	// Plan every window once to count its steps, the last first so that
	// window 0, where the epoch starts, is the one held.
	steps := make([]int, nw)
	for w := nw - 1; w >= 0; w-- {
		wp, err := p.planWindow(seed, epoch, dp, plan.blocks, w, nw)
		if err != nil {
			if nw > 1 {
				return nil, fmt.Errorf("plan: shuffle window %d of %d: %w", w, nw, err)
			}
			return nil, err
		}
		steps[w] = len(wp.order)
		plan.cur, plan.held = wp, w
	}
	plan.ends = steps
	for w := 1; w < nw; w++ {
		plan.ends[w] += plan.ends[w-1]
	}
	return plan, nil
}

// windowMembers lists window w's examples: its share of the shuffled blocks,
// each block's indices in ascending order.
func (p *Planner) windowMembers(blocks []uint32, w, nw int) []int32 {
	lo, hi := w*len(blocks)/nw, (w+1)*len(blocks)/nw
	n := p.ds.NumExamples()
	out := make([]int32, 0, (hi-lo)*planBlock)
	for _, blk := range blocks[lo:hi] {
		for i := int(blk) * planBlock; i < min(n, (int(blk)+1)*planBlock); i++ {
			out = append(out, int32(i))
		}
	}
	return out
}

// bucketOf is the flat bucket of example i; one-length buckets need only
// its length, which computed examples give without a search.
func (p *Planner) bucketOf(i int) int {
	if p.bk.Upper2 == nil {
		return p.bk.Index(Example{Len: p.ds.exLen(i)})
	}
	return p.bk.Index(p.ds.Example(i))
}

// planWindow plans window w of nw (blocks nil: the whole data set as one
// window, nw = 1). Its shuffles are seeded by (seed, epoch, bucket) for a
// whole-data plan and by (seed, epoch, bucket, nw, w) for a window.
func (p *Planner) planWindow(seed, epoch uint64, dp int, blocks []uint32, w, nw int) (*windowPlan, error) {
	// every bucket's examples in ascending order (a window: in block
	// order), one after the other
	var perm []int32
	sizes := p.sizes
	if blocks == nil {
		perm = make([]int32, p.ds.NumExamples())
		next := make([]int, len(p.sizes))
		for b := 1; b < len(next); b++ {
			next[b] = next[b-1] + p.sizes[b-1]
		}
		p.ds.Each(func(i int, e Example) {
			b := p.bk.Index(e)
			perm[next[b]] = int32(i)
			next[b]++
		})
	} else {
		members := p.windowMembers(blocks, w, nw)
		bucketOf := make([]int32, len(members))
		sizes = make([]int, len(p.sizes))
		for k, i := range members {
			b := p.bucketOf(int(i))
			bucketOf[k] = int32(b)
			sizes[b]++
		}
		next := make([]int, len(sizes))
		for b := 1; b < len(next); b++ {
			next[b] = next[b-1] + sizes[b-1]
		}
		perm = make([]int32, len(members))
		for k, i := range members {
			b := bucketOf[k]
			perm[next[b]] = i
			next[b]++
		}
	}
	seedOf := func(purpose uint64, b int) uint64 {
		if blocks == nil {
			return mix(seed, purpose, epoch, uint64(b))
		}
		return mix(seed, purpose, epoch, uint64(b), uint64(nw), uint64(w))
	}
	plan := &windowPlan{}
	groups := 0
	var carry []int32
	last := len(sizes) - 1
	for b, start := 0, 0; b <= last; b++ {
		seg := perm[start : start+sizes[b]]
		start += sizes[b]
		r := rng{s: seedOf(purposeBucketShuffle, b)}
		shuffleOf(&r, seg)
		bp := bucketPlan{bucket: b, prefix: carry, seg: seg, firstGroup: groups}
		carry = nil
		if bp.poolLen() == 0 {
			continue
		}
		bounds := p.cut(&bp, p.capOf(b), dp)
		if b < last {
			// The last batch is usually underfilled: carry it too, so only
			// the final bucket can end with a partial batch.
			full := (len(bounds) - 2) / dp * dp
			for q := int(bounds[full]); q < bp.poolLen(); q++ {
				carry = append(carry, int32(bp.at(q)))
			}
			if full > 0 {
				bp.bounds = bounds[:full+1]
				plan.buckets = append(plan.buckets, bp)
				groups += full / dp
			}
			continue
		}
		for {
			target := (len(bounds) - 1 + dp - 1) / dp * dp
			var ok bool
			if bounds, ok = splitTo(bounds, target); ok {
				break
			}
			if groups == 0 {
				return nil, fmt.Errorf("plan: %d examples cannot fill an equal number of non-empty batches on each of %d data-parallel ranks under budget %.0f (raise the budget or lower the DP size)", len(perm), dp, p.budget)
			}
			// take the last step back: its examples go first in the pool
			lb := &plan.buckets[len(plan.buckets)-1]
			k := len(lb.bounds) - 1 - dp // its first batch
			var back []int32
			for q := int(lb.bounds[k]); q < int(lb.bounds[k+dp]); q++ {
				back = append(back, int32(lb.at(q)))
			}
			lb.bounds = lb.bounds[:k+1]
			groups--
			if k == 0 {
				plan.buckets = plan.buckets[:len(plan.buckets)-1]
			}
			bp.prefix = append(back, bp.prefix...)
			bp.firstGroup = groups
			bounds = p.cut(&bp, p.capOf(b), dp)
		}
		bp.bounds = bounds
		plan.buckets = append(plan.buckets, bp)
		groups += (len(bounds) - 1) / dp
	}
	r := rng{s: mix(seed, purposeStepShuffle, epoch)}
	if blocks != nil {
		r = rng{s: seedOf(purposeStepShuffle, 0)}
	}
	plan.order = make([]uint32, groups)
	for i := range plan.order {
		plan.order[i] = uint32(i)
	}
	shuffleOf(&r, plan.order)
	return plan, nil
}

// Cost returns count × cost(longest) of a batch of example indices.
func (p *Planner) Cost(ids []int) float64 {
	longest := 0
	for _, id := range ids {
		longest = max(longest, p.ds.exLen(id))
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
		if id < 0 || id >= d.NumExamples() {
			return Batch{}, fmt.Errorf("batch: example %d out of range [0,%d)", id, d.NumExamples())
		}
		e := d.Example(id)
		if e.Tokens == nil && d.src == nil {
			return Batch{}, fmt.Errorf("batch: dataset %s has lengths only (no text) and cannot be trained on", d.Name)
		}
		t = max(t, e.Len)
	}
	b := newBatch(len(ids), t, false)
	var buf []int32
	for r, id := range ids {
		e := d.Example(id)
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
