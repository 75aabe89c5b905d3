package sampling

import (
	"errors"
	"fmt"
)

// Data is a job's loaded data: what NewSampler and validation need, built
// once per process and shared by its ranks' samplers (read-only).
type Data struct {
	Config  Config   // with defaults filled in
	Seed    uint64   // sampler seed: job seed + Config.SeedOffset
	Corpus  *Corpus  // documents; nil for two-length data and random mode
	Train   *Dataset // bucket mode: training examples
	Val     *Dataset // bucket mode: validation examples (nil without held-out data)
	Buckets *Buckets // bucket mode: bounds (estimated or from the bucket batch file)
}

// Open validates cfg and loads its data. jobSeed is the job's seed: it
// chooses the held-out documents (as LoadCorpus's seed), while the samplers
// use jobSeed + cfg.SeedOffset, so changing the offset reorders the data
// without changing the validation set.
func Open(cfg Config, jobSeed uint64) (*Data, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Data{Config: cfg, Seed: jobSeed + cfg.SeedOffset}
	if cfg.Mode == ModeRandom {
		return d, nil // synthetic tokens: no corpus to load
	}
	var err error
	if cfg.Mode != ModeBucket {
		if d.Corpus, err = loadCorpusField(cfg.Path, cfg.ValFraction, jobSeed, cfg.TextField); err != nil {
			return nil, err
		}
		return d, nil
	}
	if !cfg.TwoD() {
		if d.Corpus, err = loadCorpusField(cfg.Path, cfg.ValFraction, jobSeed, cfg.TextField); err != nil {
			return nil, err
		}
		if d.Train, d.Val, err = corpusDatasets(d.Corpus, cfg.EffectiveMaxLen(), cfg.TooLong); err != nil {
			return nil, err
		}
	} else if d.Train, d.Val, err = LoadDatasets(cfg, jobSeed); err != nil {
		return nil, err
	}
	if d.Buckets, err = bucketsFor(cfg, d.Train, d.Seed); err != nil {
		return nil, err
	}
	return d, nil
}

// bucketsFor reads the bucket batch file or estimates bounds from ds.
func bucketsFor(cfg Config, ds *Dataset, seed uint64) (*Buckets, error) {
	if cfg.BucketBatchFile != "" {
		return ReadBucketFile(cfg.BucketBatchFile, ds.TwoD, ds.MaxLen)
	}
	return EstimateBuckets(ds, cfg.Buckets, cfg.Buckets2, cfg.BoundarySample, seed), nil
}

// Sampler returns the training sampler of the configured mode for one
// data-parallel rank. All ranks with the same dpRank (the TP and SP ranks of
// one replica) get identical batches.
func (d *Data) Sampler(dpRank, dpSize int) (Sampler, error) {
	c := d.Config
	switch c.Mode {
	case ModeWindow:
		return NewWindowSampler(d.Corpus.Train, c.SeqLen, c.BatchSize, d.Seed, dpRank, dpSize)
	case ModePack:
		return NewPackSampler(d.Corpus.Train, c.SeqLen, c.BatchSize, d.Seed, dpRank, dpSize)
	case ModeBucket:
		return NewBucketSampler(d.Train, d.Buckets, c.EffectiveBudget(), c.QuadraticQ, c.MaxExamples, d.Seed, dpRank, dpSize)
	case ModeRandom:
		return NewRandomSampler(c.Vocab, c.SeqLen, c.BatchSize, d.Seed, dpRank, dpSize)
	}
	return nil, fmt.Errorf("sampler: unknown mode %q", c.Mode)
}

// ValBatches returns up to count deterministic validation batches in the
// configured mode's shape: random windows (window), the first batches of an
// epoch-0 plan of the validation examples (bucket), the first packed
// batches of the validation documents (pack), or random tokens from a stream
// no training step uses (random). It fails when there is no held-out data
// (random mode needs none).
func (d *Data) ValBatches(count int) ([]Batch, error) {
	c := d.Config
	if count <= 0 {
		return nil, fmt.Errorf("validation batches: count %d, want > 0", count)
	}
	switch c.Mode {
	case ModeWindow:
		if d.Corpus == nil || len(d.Corpus.Val) == 0 {
			return nil, errors.New("validation batches: no held-out documents (data.val_fraction = 0?)")
		}
		return FixedBatchesErr(d.Corpus.Val, c.SeqLen, c.BatchSize, count, d.Seed)
	case ModePack:
		if d.Corpus == nil || len(d.Corpus.Val) == 0 {
			return nil, errors.New("validation batches: no held-out documents (data.val_fraction = 0?)")
		}
		s, err := NewPackSampler(d.Corpus.Val, c.SeqLen, c.BatchSize, d.Seed, 0, 1)
		if err != nil {
			return nil, fmt.Errorf("validation batches: %w", err)
		}
		return takeBatches(s, min(count, s.StepsPerEpoch()))
	case ModeBucket:
		if d.Val == nil {
			return nil, errors.New("validation batches: no held-out examples (data.val_fraction = 0?)")
		}
		s, err := NewBucketSampler(d.Val, d.Buckets, c.EffectiveBudget(), c.QuadraticQ, c.MaxExamples, d.Seed, 0, 1)
		if err != nil {
			return nil, fmt.Errorf("validation batches: %w", err)
		}
		return takeBatches(s, min(count, len(s.plan.Steps)))
	case ModeRandom:
		return RandomFixedBatches(c.Vocab, c.SeqLen, c.BatchSize, count, d.Seed)
	}
	return nil, fmt.Errorf("validation batches: unknown mode %q", c.Mode)
}

func takeBatches(s Sampler, n int) ([]Batch, error) {
	out := make([]Batch, n)
	for i := range out {
		b, err := s.Next()
		if err != nil {
			return nil, fmt.Errorf("validation batches: %w", err)
		}
		out[i] = b
	}
	return out, nil
}
