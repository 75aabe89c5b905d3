package sampling

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/moetrain/moetrain/tokenizer"
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
	// Prepared is the memory-mapped dataset when data.path is a prepared
	// directory (IsPrepared); Corpus is nil then. Close unmaps it.
	Prepared *Prepared
	// Tokenizer is data.tokenizer loaded (tokenizer.Byte by default): what
	// the documents' tokens are, and how many text bytes a token stands for.
	Tokenizer tokenizer.Tokenizer
}

// Close releases the memory maps of a prepared dataset (nothing otherwise).
func (d *Data) Close() error {
	if d.Prepared != nil {
		return d.Prepared.Close()
	}
	return nil
}

// sources returns the training and validation documents of the data.
func (d *Data) sources() (train, val docSource, err error) {
	switch {
	case d.Prepared != nil:
		return d.Prepared.train, d.Prepared.val, nil
	case d.Corpus != nil:
		return memDocs(d.Corpus.Train), memDocs(d.Corpus.Val), nil
	}
	return nil, nil, errors.New("no documents loaded")
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
	d := &Data{Config: cfg, Seed: jobSeed + cfg.SeedOffset, Tokenizer: tokenizer.Byte{}}
	if cfg.Mode == ModeRandom {
		return d, nil // synthetic tokens: no corpus to load
	}
	var err error
	if !tokenizer.IsByte(cfg.Tokenizer) {
		if d.Tokenizer, err = tokenizer.Open(cfg.Tokenizer); err != nil {
			return nil, fmt.Errorf("data.tokenizer: %w", err)
		}
		if cfg.TwoD() {
			return nil, fmt.Errorf("data.tokenizer = %q: two-length data supports only the byte tokenizer", cfg.Tokenizer)
		}
	}
	if IsPrepared(cfg.Path) {
		if cfg.TwoD() {
			return nil, fmt.Errorf("data %s: a prepared dataset has one length; two-length data needs a .jsonl file", cfg.Path)
		}
		if d.Prepared, err = OpenPrepared(cfg.Path, cfg.Mode, cfg.ValFraction, jobSeed); err != nil {
			return nil, err
		}
		if err := checkPreparedTokenizer(d.Prepared, d.Tokenizer); err != nil {
			d.Close()
			return nil, err
		}
		if cfg.Mode == ModeBucket {
			if err := d.preparedExamples(); err != nil {
				d.Close()
				return nil, err
			}
		}
		return d, nil
	}
	if cfg.Mode != ModeBucket {
		if d.Corpus, err = d.loadCorpus(jobSeed); err != nil {
			return nil, err
		}
		return d, nil
	}
	if !cfg.TwoD() {
		if d.Corpus, err = d.loadCorpus(jobSeed); err != nil {
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

// loadCorpus reads data.path's documents and encodes them with
// d.Tokenizer (the readers give byte tokens).
func (d *Data) loadCorpus(jobSeed uint64) (*Corpus, error) {
	cfg := d.Config
	c, err := loadCorpusField(cfg.Path, cfg.ValFraction, jobSeed, cfg.TextField)
	if err != nil || tokenizer.IsByte(cfg.Tokenizer) {
		return c, err
	}
	if c, err = retokenize(c, d.Tokenizer); err != nil {
		return nil, fmt.Errorf("data.tokenizer %s: %w", cfg.Tokenizer, err)
	}
	return c, nil
}

// preparedExamples builds bucket mode's examples and bounds of a prepared
// dataset from its index (tokens are read when batched).
func (d *Data) preparedExamples() error {
	c, p := d.Config, d.Prepared
	var err error
	if d.Train, err = newDataset(c.Path, p.train, c.EffectiveMaxLen(), c.TooLong); err != nil {
		return err
	}
	if p.val.numDocs() > 0 {
		if d.Val, err = newDataset(c.Path+" (validation)", p.val, c.EffectiveMaxLen(), c.TooLong); err != nil {
			return err
		}
	}
	d.Buckets, err = bucketsFor(c, d.Train, d.Seed)
	// Estimating the bounds left an index list of 4 bytes per example
	// behind; collect it now so that the first plan's list, of the same
	// size, reuses its pages instead of adding to the peak resident memory.
	runtime.GC()
	return err
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
	s, err := d.sampler(dpRank, dpSize)
	if err != nil {
		return nil, err
	}
	fp := ""
	if d.Tokenizer != nil && d.Config.Mode != ModeRandom && d.Tokenizer.Fingerprint() != tokenizer.ByteFingerprint {
		fp = d.Tokenizer.Fingerprint()
	}
	return tokenizerSampler{Sampler: s, fp: fp}, nil
}

func (d *Data) sampler(dpRank, dpSize int) (Sampler, error) {
	c := d.Config
	switch c.Mode {
	case ModeWindow, ModePack:
		train, _, err := d.sources()
		if err != nil {
			return nil, fmt.Errorf("sampler: %w", err)
		}
		if c.Mode == ModeWindow {
			return newWindowSampler(train, c.SeqLen, c.BatchSize, d.Seed, dpRank, dpSize)
		}
		return newPackSampler(train, c.SeqLen, c.BatchSize, d.Seed, dpRank, dpSize)
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
	case ModeWindow, ModePack:
		_, val, err := d.sources()
		if err != nil || val.numDocs() == 0 {
			return nil, errors.New("validation batches: no held-out documents (data.val_fraction = 0?)")
		}
		if c.Mode == ModeWindow {
			return fixedBatches(val, c.SeqLen, c.BatchSize, count, d.Seed)
		}
		s, err := newPackSampler(val, c.SeqLen, c.BatchSize, d.Seed, 0, 1)
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
		return takeBatches(s, min(count, s.plan.NumSteps()))
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
