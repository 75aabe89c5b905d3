package sampling

import "testing"

// Benchmarks of batch production on the embedded corpus at the reference
// shape (8 × 256 tokens per batch, budget 2048 in bucket mode). The window
// sampler is the anchor: bucket and pack should cost the same order per token.

func benchSampler(b *testing.B, mode string) {
	c := DefaultConfig()
	c.Mode = mode
	benchNext(b, c)
}

// benchNext times Next on the data c opens, reporting slots per second.
func benchNext(b *testing.B, c Config) {
	d, err := Open(c, 1)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	s := newSampler(b, d, 0, 1)
	b.ResetTimer()
	tokens := 0
	for i := 0; i < b.N; i++ {
		x, err := s.Next()
		if err != nil {
			b.Fatal(err)
		}
		tokens += x.B * x.T
	}
	b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "slots/s")
}

func BenchmarkNextWindow(b *testing.B) { benchSampler(b, ModeWindow) }
func BenchmarkNextBucket(b *testing.B) { benchSampler(b, ModeBucket) }
func BenchmarkNextPack(b *testing.B)   { benchSampler(b, ModePack) }

// BenchmarkPlanEpoch is the cost of planning one epoch of the embedded
// corpus (what a bucket sampler pays at each epoch start and on Restore).
func BenchmarkPlanEpoch(b *testing.B) {
	c, _ := DefaultCorpus()
	benchPlanEpoch(b, memDocs(c.Train))
}

// benchPlanEpoch times Plan over the examples of src (max_len 2048, split)
// with the buckets and token budget of BenchmarkPlanEpoch, 8 ranks.
func benchPlanEpoch(b *testing.B, src docSource) {
	ds, err := newDataset("emb", src, 2048, TooLongSplit)
	if err != nil {
		b.Fatal(err)
	}
	p, err := NewPlanner(ds, EstimateBuckets(ds, 64, 1, 0, 1), 16384, 0, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := p.Plan(1, uint64(i), 8); err != nil {
			b.Fatal(err)
		}
	}
}

// benchPrepared is benchSampler on the embedded corpus's documents written
// as a prepared dataset (repeated to 2^25 tokens, 64 MiB of shards), read
// through the memory maps; compare with BenchmarkNextWindow and
// BenchmarkNextPack.
func benchPrepared(b *testing.B, mode string) {
	c, err := DefaultCorpus()
	if err != nil {
		b.Fatal(err)
	}
	var docs [][]int32
	for n := 0; n < 1<<25; {
		for _, d := range c.Train {
			docs = append(docs, d.Tokens)
			n += len(d.Tokens)
		}
	}
	cfg := DefaultConfig()
	cfg.Mode, cfg.Path = mode, writePrepared(b, docs, Vocab, 1<<22)
	benchNext(b, cfg)
}

func BenchmarkNextWindowPrepared(b *testing.B) { benchPrepared(b, ModeWindow) }
func BenchmarkNextPackPrepared(b *testing.B)   { benchPrepared(b, ModePack) }

func BenchmarkNextBucketPrepared(b *testing.B) { benchPrepared(b, ModeBucket) }

// BenchmarkPlanEpochPrepared is BenchmarkPlanEpoch on the same documents
// written as a prepared dataset, whose examples are computed from the
// document lengths rather than listed.
func BenchmarkPlanEpochPrepared(b *testing.B) {
	c, _ := DefaultCorpus()
	docs := make([][]int32, len(c.Train))
	for i, d := range c.Train {
		docs[i] = d.Tokens
	}
	pr, err := OpenPrepared(writePrepared(b, docs, Vocab, 1<<22), ModeBucket, 0, 1)
	if err != nil {
		b.Fatal(err)
	}
	defer pr.Close()
	benchPlanEpoch(b, pr.train)
}
