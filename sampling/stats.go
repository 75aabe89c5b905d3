package sampling

import "fmt"

// BatchStats summarises one batching strategy over one epoch.
type BatchStats struct {
	Strategy  string
	Batches   int
	Examples  int   // examples (segments when packing) summed over batches
	Real      int64 // positions with a target-bearing token (sum of example lengths)
	Slots     int64 // B×T summed over batches (real + padding)
	MaxCost   float64
	MaxSlots  int
	MeanSlots float64
}

// Padding is the share of batch slots that hold padding.
func (s BatchStats) Padding() float64 {
	if s.Slots == 0 {
		return 0
	}
	return 1 - float64(s.Real)/float64(s.Slots)
}

// MeanExamples is the average number of examples per batch.
func (s BatchStats) MeanExamples() float64 { return float64(s.Examples) / float64(max(1, s.Batches)) }

// MeanTokens is the average number of real tokens per batch.
func (s BatchStats) MeanTokens() float64 { return float64(s.Real) / float64(max(1, s.Batches)) }

func (s BatchStats) String() string {
	return fmt.Sprintf("%-8s batches %7d  examples/batch %7.2f  tokens/batch %9.1f  padding %5.1f%%",
		s.Strategy, s.Batches, s.MeanExamples(), s.MeanTokens(), 100*s.Padding())
}

func (s *BatchStats) add(b, t int, examples int, real int64, cost float64) {
	s.Batches++
	s.Examples += examples
	s.Real += real
	s.Slots += int64(b * t)
	s.MaxSlots = max(s.MaxSlots, b*t)
	s.MaxCost = max(s.MaxCost, cost)
}

// NaiveStats is the baseline: a fixed number of examples per batch, as many
// as fit the budget at the longest possible length (count = budget /
// cost(MaxLen)), drawn in a seeded random order and padded to the longest in
// each batch.
func NaiveStats(ds *Dataset, budget int, q float64, seed uint64) BatchStats {
	n := max(1, int(float64(budget)/exampleCost(ds.MaxLen, q)))
	idx := make([]int, ds.NumExamples())
	for i := range idx {
		idx[i] = i
	}
	r := rng{s: mix(seed, purposeNaive)}
	r.shuffle(idx)
	st := BatchStats{Strategy: "naive"}
	for a := 0; a < len(idx); a += n {
		ids := idx[a:min(a+n, len(idx))]
		longest, real := 0, int64(0)
		for _, id := range ids {
			l := ds.exLen(id)
			longest = max(longest, l)
			real += int64(l)
		}
		st.add(len(ids), longest, len(ids), real, float64(len(ids))*exampleCost(longest, q))
	}
	return st
}

// PlanStats measures an epoch plan (all ranks' batches).
func PlanStats(p *Planner, plan *EpochPlan) BatchStats {
	st := BatchStats{Strategy: "bucket"}
	for s := range plan.NumSteps() {
		for r := range plan.dp {
			ids := plan.Batch(s, r)
			longest, real := 0, int64(0)
			for _, id := range ids {
				l := p.ds.exLen(id)
				longest = max(longest, l)
				real += int64(l)
			}
			st.add(len(ids), longest, len(ids), real, p.Cost(ids))
		}
	}
	return st
}

// PackStats measures packing the examples' positions, in dataset order, into
// rows of seqLen positions, rows per batch, with one rank (the last batch is
// shrunk as PackSampler does). Segments are counted as examples.
func PackStats(ds *Dataset, seqLen, rows int) BatchStats {
	st := BatchStats{Strategy: "pack"}
	per := int64(seqLen * rows)
	total := int64(ds.Tokens())
	ne := ds.NumExamples()
	// segments: every example starts one, every row boundary inside an
	// example starts another.
	var pos int64
	ex := 0
	exStart := int64(0)
	for pos < total {
		end := min(pos+per, total)
		w := int64(seqLen)
		nrows := (end - pos + w - 1) / w
		if end-pos < per {
			w = (end - pos + nrows - 1) / nrows
			nrows = (end - pos + w - 1) / w
		}
		segs := 0
		for r := int64(0); r < nrows; r++ {
			ra, rb := pos+r*w, min(pos+(r+1)*w, end)
			// walk examples overlapping [ra, rb)
			for ex < ne && exStart+int64(ds.exLen(ex)) <= ra {
				exStart += int64(ds.exLen(ex))
				ex++
			}
			k, ks := ex, exStart
			for k < ne && ks < rb {
				segs++
				ks += int64(ds.exLen(k))
				k++
			}
		}
		st.add(int(nrows), int(w), segs, end-pos, float64(nrows*w))
		pos = end
	}
	return st
}

// Histogram counts example lengths in bins of equal width up to maxLen:
// Counts[i] and Tokens[i] cover lengths in (i×Width, (i+1)×Width].
type Histogram struct {
	Width  int
	Counts []int
	Tokens []int64
}

// LengthHistogram bins ds's example lengths into n bins.
func LengthHistogram(ds *Dataset, n int) Histogram {
	w := max(1, (ds.MaxLen+n-1)/n)
	h := Histogram{Width: w, Counts: make([]int, n), Tokens: make([]int64, n)}
	ds.Each(func(_ int, e Example) {
		i := min(max(0, (e.Len-1)/w), n-1)
		h.Counts[i]++
		h.Tokens[i] += int64(e.Len)
	})
	return h
}

// LoadAllExamples loads every example of cfg's data (training and held-out
// together) as one Dataset, for data statistics. cfg is completed with
// defaults and validated as for bucket mode.
func LoadAllExamples(cfg Config, seed uint64) (*Dataset, error) {
	cfg = cfg.WithDefaults()
	cfg.Mode = ModeBucket
	cfg.ValFraction = 0
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	train, val, err := LoadDatasets(cfg, seed)
	if err != nil {
		return nil, err
	}
	if val == nil {
		return train, nil
	}
	// The examples of the two parts, listed (statistics read lengths only;
	// computed examples address their own part's documents, so the joined
	// list keeps no source and cannot be batched).
	all := *train
	all.Examples = make([]Example, 0, train.NumExamples()+val.NumExamples())
	for _, part := range []*Dataset{train, val} {
		part.Each(func(_ int, e Example) { all.Examples = append(all.Examples, e) })
	}
	if train.ix != nil || val.ix != nil {
		all.src, all.ix = nil, nil
		for i := range all.Examples {
			all.Examples[i].Tokens = nil
		}
	}
	all.Docs += val.Docs
	all.Split += val.Split
	all.Truncated += val.Truncated
	all.Dropped += val.Dropped
	return &all, nil
}
