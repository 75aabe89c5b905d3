package sampling

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
)

// stepsOf lists a plan's batches: steps[s][r] = plan.Batch(s, r).
func stepsOf(plan *EpochPlan) [][][]int {
	out := make([][][]int, plan.NumSteps())
	for s := range out {
		out[s] = make([][]int, plan.dp)
		for r := range out[s] {
			out[s][r] = plan.Batch(s, r)
		}
	}
	return out
}

// refPlan is the planner written plainly, a list per batch and per bucket
// (the form the compact EpochPlan replaced): the naive reference the plans
// are compared with, batch for batch.
func refPlan(p *Planner, seed, epoch uint64, dp int) (steps [][][]int, buckets []int, err error) {
	var all []int
	p.ds.Each(func(i int, _ Example) { all = append(all, i) })
	return refPlanOf(p, all, dp, func(purpose uint64, b int) uint64 {
		if purpose == purposeStepShuffle {
			return mix(seed, purpose, epoch)
		}
		return mix(seed, purpose, epoch, uint64(b))
	})
}

// refWindowedPlan is the reference of a plan in shuffle windows of about
// window examples (more than n; else the whole-data plan): blocks of planBlock indices shuffled, dealt into windows
// in turn, each window planned by refPlanOf, the windows' steps in order.
func refWindowedPlan(p *Planner, seed, epoch uint64, dp, window int) (steps [][][]int, buckets []int, err error) {
	n := p.ds.NumExamples()
	if n <= window {
		return refPlan(p, seed, epoch, dp)
	}
	nb := (n + planBlock - 1) / planBlock
	nw := min((n+window-1)/window, nb)
	blocks := make([]int, nb)
	for i := range blocks {
		blocks[i] = i
	}
	r := rng{s: mix(seed, purposeWindowDeal, epoch)}
	r.shuffle(blocks)
	for w := range nw {
		var members []int
		for _, blk := range blocks[w*nb/nw : (w+1)*nb/nw] {
			for i := blk * planBlock; i < min(n, (blk+1)*planBlock); i++ {
				members = append(members, i)
			}
		}
		ws, wb, err := refPlanOf(p, members, dp, func(purpose uint64, b int) uint64 {
			return mix(seed, purpose, epoch, uint64(b), uint64(nw), uint64(w))
		})
		if err != nil {
			return nil, nil, err
		}
		steps, buckets = append(steps, ws...), append(buckets, wb...)
	}
	return steps, buckets, nil
}

// refPlanOf plans the examples members (ascending within each bucket as
// listed) with the stream seeds seedOf(purpose, bucket) (bucket 0 for the
// step shuffle).
func refPlanOf(p *Planner, members []int, dp int, seedOf func(purpose uint64, b int) uint64) (steps [][][]int, buckets []int, err error) {
	byBucket := make([][]int, p.bk.N())
	for _, i := range members {
		b := p.bk.Index(p.ds.Example(i))
		byBucket[b] = append(byBucket[b], i)
	}
	cut := func(pool []int, capacity int) [][]int {
		var out [][]int
		var cur []int
		longest := 0
		for _, id := range pool {
			l := p.ds.Example(id).Len
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
	splitTo := func(batches [][]int, target int) ([][]int, bool) {
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
	type group struct {
		bucket  int
		batches [][]int
	}
	var groups []group
	var carry []int
	last := len(byBucket) - 1
	for b := 0; b <= last; b++ {
		ids := append([]int(nil), byBucket[b]...)
		r := rng{s: seedOf(purposeBucketShuffle, b)}
		r.shuffle(ids)
		pool := append(append([]int(nil), carry...), ids...)
		carry = nil
		if len(pool) == 0 {
			continue
		}
		batches := cut(pool, p.capOf(b))
		if b < last {
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
				return nil, nil, fmt.Errorf("plan: cannot fill %d ranks", dp)
			}
			g := groups[len(groups)-1]
			groups = groups[:len(groups)-1]
			var back []int
			for _, bt := range g.batches {
				back = append(back, bt...)
			}
			pool = append(back, pool...)
			batches = cut(pool, p.capOf(b))
		}
		for i := 0; i < len(batches); i += dp {
			groups = append(groups, group{b, batches[i : i+dp]})
		}
	}
	r := rng{s: seedOf(purposeStepShuffle, 0)}
	order := make([]int, len(groups))
	for i := range order {
		order[i] = i
	}
	r.shuffle(order)
	for _, gi := range order {
		steps = append(steps, groups[gi].batches)
		buckets = append(buckets, groups[gi].bucket)
	}
	return steps, buckets, nil
}

// TestPlanMatchesReference: the compact plan lists the reference planner's
// batches, in its step order and buckets, for in-memory and computed
// (prepared) examples, several seeds, epochs, DP sizes, caps and budgets
// (small budgets and many ranks exercise carries, splits and take-backs).
func TestPlanMatchesReference(t *testing.T) {
	check := func(name string, ds *Dataset, bk *Buckets, budget, maxEx int, q float64) {
		t.Helper()
		p, err := NewPlanner(ds, bk, budget, q, maxEx)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, dp := range []int{1, 2, 3, 8} {
			for _, seed := range []uint64{1, 2, 77} {
				for epoch := uint64(0); epoch < 2; epoch++ {
					want, wantB, werr := refPlan(p, seed, epoch, dp)
					plan, err := p.Plan(seed, epoch, dp)
					if (err != nil) != (werr != nil) {
						t.Fatalf("%s dp %d seed %d: error %v, reference %v", name, dp, seed, err, werr)
					}
					if err != nil {
						continue
					}
					if got := stepsOf(plan); !reflect.DeepEqual(got, want) {
						t.Fatalf("%s dp %d seed %d epoch %d: plan differs from the reference (%d and %d steps)", name, dp, seed, epoch, len(got), len(want))
					}
					for s := range wantB {
						if plan.StepBucket(s) != wantB[s] {
							t.Fatalf("%s dp %d seed %d: step %d bucket %d, want %d", name, dp, seed, s, plan.StepBucket(s), wantB[s])
						}
					}
				}
			}
		}
	}
	for _, tc := range bucketCases(t) {
		check(tc.name, tc.ds, tc.bk, tc.budget, tc.maxExamples, tc.q)
	}
	// in shuffle windows: against the windowed reference, the steps read
	// in reverse so that every window is planned again
	for _, tc := range bucketCases(t) {
		p, err := NewPlanner(tc.ds, tc.bk, tc.budget, tc.q, tc.maxExamples)
		if err != nil {
			t.Fatal(err)
		}
		for _, window := range []int{64, 100, 333} {
			p.window = window
			for _, dp := range []int{1, 3} {
				for epoch := uint64(0); epoch < 2; epoch++ {
					want, wantB, werr := refWindowedPlan(p, 4, epoch, dp, window)
					plan, err := p.Plan(4, epoch, dp)
					if (err != nil) != (werr != nil) {
						t.Fatalf("%s window %d dp %d: error %v, reference %v", tc.name, window, dp, err, werr)
					}
					if err != nil {
						continue
					}
					if plan.NumSteps() != len(want) {
						t.Fatalf("%s window %d dp %d: %d steps, reference %d", tc.name, window, dp, plan.NumSteps(), len(want))
					}
					for s := len(want) - 1; s >= 0; s-- {
						for r := range dp {
							if got := plan.Batch(s, r); !slices.Equal(got, want[s][r]) {
								t.Fatalf("%s window %d dp %d epoch %d: step %d rank %d batch %v, reference %v", tc.name, window, dp, epoch, s, r, got, want[s][r])
							}
						}
						if plan.StepBucket(s) != wantB[s] {
							t.Fatalf("%s window %d dp %d: step %d bucket %d, want %d", tc.name, window, dp, s, plan.StepBucket(s), wantB[s])
						}
					}
				}
			}
		}
	}
	for seed := uint64(0); seed < 6; seed++ {
		r := rand.New(rand.NewPCG(seed, 9))
		docs := randomDocs(r, 5+r.IntN(120), []int{20, 300, 2000}[seed%3], 256)
		maxLen := []int{16, 64, 100}[seed%3]
		tooLong := []string{TooLongSplit, TooLongTruncate}[seed%2]
		prep, err := OpenPrepared(preparedDocs(t, docs, 256), ModeBucket, 0, seed)
		if err != nil {
			t.Fatal(err)
		}
		ds, mem := preparedAndMemory(t, prep.train, maxLen, tooLong)
		if ds.ix == nil || mem.ix != nil {
			t.Fatal("prepared examples should be computed and in-memory ones listed")
		}
		// computed examples equal the listed ones (token slices aside)
		if ds.NumExamples() != mem.NumExamples() || ds.Split != mem.Split || ds.Truncated != mem.Truncated || ds.Dropped != mem.Dropped {
			t.Fatalf("seed %d: %d examples (%d/%d/%d), in memory %d (%d/%d/%d)", seed, ds.NumExamples(), ds.Split, ds.Truncated, ds.Dropped,
				mem.NumExamples(), mem.Split, mem.Truncated, mem.Dropped)
		}
		ds.Each(func(i int, e Example) {
			m := mem.Examples[i]
			if !reflect.DeepEqual(e, ds.Example(i)) || e.Len != ds.exLen(i) || e.Doc != m.Doc || e.Len != m.Len ||
				!slices.Equal(ds.src.appendTokens(nil, e.Doc, e.Off, e.Off+e.Len+1), m.Tokens) {
				t.Fatalf("seed %d: example %d %+v, in memory doc %d len %d", seed, i, e, m.Doc, m.Len)
			}
		})
		for _, nb := range []int{1, 4, 16} {
			bk := EstimateBuckets(ds, nb, 0, 0, seed)
			if mb := EstimateBuckets(mem, nb, 0, 0, seed); !reflect.DeepEqual(bk, mb) {
				t.Fatalf("seed %d: bounds %v, in memory %v", seed, bk.Upper, mb.Upper)
			}
			for _, budget := range []int{maxLen, 3 * maxLen, 40 * maxLen} {
				check(fmt.Sprintf("prepared seed %d buckets %d budget %d", seed, nb, budget), ds, bk, budget, 0, 0)
				check(fmt.Sprintf("memory seed %d buckets %d budget %d", seed, nb, budget), mem, bk, budget, 5, 0)
			}
		}
		prep.Close()
	}
}

// TestExampleIndexLengths: computed lengths equal the listed ones when
// max_len is too large for the 16-bit length table (lengths by search).
func TestExampleIndexLengths(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	docs := randomDocs(r, 60, 400, 256)
	docs = append(docs, make([]int32, 70002)) // one example of exactly max_len
	prep, err := OpenPrepared(preparedDocs(t, docs, 256), ModeBucket, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer prep.Close()
	for _, maxLen := range []int{7, 70001} {
		ds, mem := preparedAndMemory(t, prep.train, maxLen, TooLongSplit)
		if (ds.ix.short == nil) != (maxLen > 65535) || ds.NumExamples() != mem.NumExamples() {
			t.Fatalf("max_len %d: length table %v, %d examples, want %d", maxLen, ds.ix.short != nil, ds.NumExamples(), mem.NumExamples())
		}
		for i := range mem.Examples {
			if got, want := ds.exLen(i), mem.Examples[i].Len; got != want {
				t.Fatalf("max_len %d: example %d has length %d, want %d", maxLen, i, got, want)
			}
		}
	}
}
