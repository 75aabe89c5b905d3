package sampling

import (
	"fmt"
	"math"
)

// BucketSampler yields length-bucketed dynamic batches of whole examples for
// one data-parallel rank (see Planner.Plan). Every rank of a job computes the
// same EpochPlan and takes its own column, so the ranks agree without
// communicating. The number of steps can differ between epochs (the carry of
// incomplete steps depends on the shuffle) but never between ranks.
type BucketSampler struct {
	p              *Planner
	seed           uint64
	dpRank, dpSize int
	epoch, step    uint64
	plan           *EpochPlan
	fp             uint64
}

// NewBucketSampler builds the sampler and plans epoch 0 (so an impossible
// configuration fails here, not mid-training). ds must carry tokens.
func NewBucketSampler(ds *Dataset, bk *Buckets, budget int, q float64, maxExamples int, seed uint64, dpRank, dpSize int) (*BucketSampler, error) {
	return newBucketSampler(ds, bk, budget, q, maxExamples, seed, dpRank, dpSize, DefaultPlanWindow)
}

// newBucketSampler is NewBucketSampler with window examples per shuffle
// window.
func newBucketSampler(ds *Dataset, bk *Buckets, budget int, q float64, maxExamples int, seed uint64, dpRank, dpSize, window int) (*BucketSampler, error) {
	if dpSize <= 0 || dpRank < 0 || dpRank >= dpSize {
		return nil, fmt.Errorf("bucket sampler: dp rank %d of size %d, want 0 <= rank < size", dpRank, dpSize)
	}
	if ds != nil && !ds.trainable() {
		return nil, fmt.Errorf("bucket sampler: dataset %s has lengths only (no text) and cannot be trained on", ds.Name)
	}
	p, err := NewPlanner(ds, bk, budget, q, maxExamples)
	if err != nil {
		return nil, fmt.Errorf("bucket sampler: %w", err)
	}
	p.window = window
	s := &BucketSampler{p: p, seed: seed, dpRank: dpRank, dpSize: dpSize}
	if s.plan, err = p.Plan(seed, 0, dpSize); err != nil {
		return nil, fmt.Errorf("bucket sampler: %w", err)
	}
	s.fp = s.fingerprint()
	return s, nil
}

// fingerprint identifies the data and batching configuration (not the DP
// size, which State records on its own).
func (s *BucketSampler) fingerprint() uint64 {
	// mix of the words below, folded one at a time (no list per example)
	h := mix()
	fold := func(w uint64) { r := rng{s: h ^ w}; h = r.next() }
	for _, w := range []uint64{uint64(s.p.ds.NumExamples()), math.Float64bits(s.p.budget), math.Float64bits(s.p.q), uint64(s.p.maxExamples)} {
		fold(w)
	}
	s.p.ds.Each(func(_ int, e Example) { fold(uint64(e.Len)<<32 | uint64(e.In)) })
	for _, u := range s.p.bk.Upper {
		fold(uint64(u))
	}
	for _, u2 := range s.p.bk.Upper2 {
		for _, u := range u2 {
			fold(uint64(u) | 1<<40)
		}
	}
	for _, c := range s.p.bk.MaxCount {
		fold(uint64(c) | 1<<41)
	}
	if n := s.p.ds.NumExamples(); n > s.p.window {
		// planned in shuffle windows: their size decides the batches
		fold(uint64(s.p.window) | 1<<42)
	}
	return h
}

// Plan returns the current epoch's plan (shared; do not modify).
func (s *BucketSampler) Plan() (*EpochPlan, error) {
	if s.plan == nil || s.plan.Epoch != s.epoch {
		s.plan = nil // the old plan can be collected while the new one is built
		p, err := s.p.Plan(s.seed, s.epoch, s.dpSize)
		if err != nil {
			return nil, err
		}
		s.plan = p
	}
	return s.plan, nil
}

// StepsPerEpoch is the number of steps of the current epoch (the same on
// every rank; it can differ slightly between epochs).
func (s *BucketSampler) StepsPerEpoch() (int, error) {
	plan, err := s.Plan()
	if err != nil {
		return 0, err
	}
	return plan.NumSteps(), nil
}

// Next returns this rank's batch of the current step and advances; after an
// epoch's last step the state is (epoch+1, 0).
func (s *BucketSampler) Next() (Batch, error) {
	plan, err := s.Plan()
	if err != nil {
		return Batch{}, err
	}
	b, err := s.p.ds.Batch(plan.Batch(int(s.step), s.dpRank))
	if err != nil {
		return Batch{}, err
	}
	// Roll over eagerly so that the end of an epoch has one State, (e+1, 0).
	if s.step++; s.step == uint64(plan.NumSteps()) {
		s.epoch++
		s.step = 0
	}
	return b, nil
}

// State returns (epoch, step) with the seed and a fingerprint of the data.
func (s *BucketSampler) State() State {
	return State{Kind: ModeBucket, Seed: s.seed, Epoch: s.epoch, Step: s.step, DPSize: s.dpSize, Fingerprint: s.fp}
}

// Restore continues at the state's position. It refuses a state of another
// kind, seed or data set; a state taken under another DP size is accepted
// only at an epoch boundary (the plan of an epoch depends on the DP size).
func (s *BucketSampler) Restore(st State) error {
	if err := checkRestore(st, ModeBucket, s.seed, s.fp, s.dpSize); err != nil {
		return fmt.Errorf("bucket sampler: %w", err)
	}
	oldEpoch, oldStep := s.epoch, s.step
	s.epoch, s.step = st.Epoch, st.Step
	plan, err := s.Plan()
	if err == nil && s.step >= uint64(plan.NumSteps()) {
		err = fmt.Errorf("bucket sampler: state step %d beyond the %d steps of epoch %d", st.Step, plan.NumSteps(), st.Epoch)
	}
	if err != nil {
		s.epoch, s.step = oldEpoch, oldStep
		return err
	}
	return nil
}

func checkRestore(st State, kind string, seed, fp uint64, dpSize int) error {
	if st.Kind != kind {
		return fmt.Errorf("cannot restore a %q sampler state into a %q sampler", st.Kind, kind)
	}
	if st.Seed != seed {
		return fmt.Errorf("state has seed %d, sampler %d", st.Seed, seed)
	}
	if st.Fingerprint != fp {
		return fmt.Errorf("state was taken on other data or batching settings (fingerprint %x, now %x)", st.Fingerprint, fp)
	}
	if st.DPSize != dpSize && st.Step != 0 {
		return fmt.Errorf("state was taken mid-epoch (epoch %d, step %d) with dp size %d; with dp size %d the epoch's batches differ, so resume from a checkpoint at an epoch boundary or keep dp size %d", st.Epoch, st.Step, st.DPSize, dpSize, st.DPSize)
	}
	return nil
}
