package sampling

import "testing"

// TestBucketingAcceptance checks what bucketing is for (see
// docs/algorithms/bucketing.md#checks-and-tools): with examples of up to
// 2,048 tokens and a budget of 16,384 tokens per batch, bucketing pads at
// most 5% and fits at least 4× the examples of naive fixed-size random
// batching, on the embedded corpus and on a bimodal synthetic set.
func TestBucketingAcceptance(t *testing.T) {
	const maxLen, budget = 2048, 16384
	emb, err := DefaultCorpus()
	if err != nil {
		t.Fatal(err)
	}
	bimodal, err := SyntheticDocuments(SyntheticBimodal, 20000, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, set := range []struct {
		name string
		docs []Document
	}{{"embedded", emb.Train}, {"bimodal", bimodal}} {
		ds, err := NewDataset(set.name, set.docs, maxLen, TooLongSplit)
		if err != nil {
			t.Fatal(err)
		}
		cfg := DefaultConfig()
		bk := EstimateBuckets(ds, cfg.Buckets, 1, cfg.BoundarySample, 1)
		p, err := NewPlanner(ds, bk, budget, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, dp := range []int{1, 8} {
			plan, err := p.Plan(1, 0, dp)
			if err != nil {
				t.Fatal(err)
			}
			b := PlanStats(p, plan)
			n := NaiveStats(ds, budget, 0, 1)
			pk := PackStats(ds, maxLen, budget/maxLen)
			ratio := b.MeanExamples() / n.MeanExamples()
			t.Logf("%s (%d examples, %d split docs) dp %d:\n  %v\n  %v\n  %v\n  examples/batch ratio bucket/naive %.2f", set.name, len(ds.Examples), ds.Split, dp, n, b, pk, ratio)
			if b.Padding() > 0.05 {
				t.Errorf("%s dp %d: bucketing padding %.1f%% > 5%%", set.name, dp, 100*b.Padding())
			}
			if ratio < 4 {
				t.Errorf("%s dp %d: bucketing fits %.2f× the examples of naive batching, want >= 4", set.name, dp, ratio)
			}
			if b.MaxCost > budget {
				t.Errorf("%s: a batch costs %.0f > budget", set.name, b.MaxCost)
			}
		}
	}
}
