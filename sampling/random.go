package sampling

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
)

// Purposes of random mode's streams. They sit far above rng.go's iota list
// so that the two lists can grow independently without sharing a stream.
const (
	purposeRandomTrain uint64 = 0x72616e64_00000001 + iota // "rand" + n
	purposeRandomVal
)

// RandomSampler yields batches of uniformly random token ids in [0, vocab),
// for throughput runs at any vocabulary size (the byte tokenizer caps real
// text at 256). Each row is seqLen+1 tokens of one random stream: the row's
// inputs are the first seqLen, its targets the last seqLen, so a target is
// always the next input of its row. Pos is 0..T-1 and Seg nil, as in window
// mode. Row r of step s depends only on (seed, s, dpRank, r), so the stream
// never ends and State is the step count.
type RandomSampler struct {
	stepStream
	vocab         uint64
	seqLen, batch int
}

// NewRandomSampler builds the random-token sampler of data-parallel rank
// dpRank in [0, dpSize).
func NewRandomSampler(vocab, seqLen, batchSize int, seed uint64, dpRank, dpSize int) (Sampler, error) {
	return newRandomSampler(vocab, seqLen, batchSize, seed, dpRank, dpSize)
}

func newRandomSampler(vocab, seqLen, batchSize int, seed uint64, dpRank, dpSize int) (*RandomSampler, error) {
	if err := checkRandomShape(vocab, seqLen, batchSize); err != nil {
		return nil, fmt.Errorf("random sampler: %w", err)
	}
	pos, err := newStepStream(ModeRandom, seed, dpRank, dpSize)
	if err != nil {
		return nil, err
	}
	return &RandomSampler{stepStream: pos, vocab: uint64(vocab), seqLen: seqLen, batch: batchSize}, nil
}

func checkRandomShape(vocab, seqLen, batchSize int) error {
	if vocab < 1 || vocab > MaxRandomVocab {
		return fmt.Errorf("vocab %d, want 1..%d", vocab, MaxRandomVocab)
	}
	if seqLen <= 0 || batchSize <= 0 {
		return fmt.Errorf("seq_len=%d batch_size=%d, both must be positive", seqLen, batchSize)
	}
	return nil
}

// Next returns the batch of the current step and advances.
func (s *RandomSampler) Next() (Batch, error) {
	b := newRandomBatch(s.batch, s.seqLen)
	for r := 0; r < s.batch; r++ {
		fillRandomRow(b, r, s.vocab, mix(s.seed, purposeRandomTrain, s.step, uint64(s.dpRank), uint64(r)))
	}
	s.step++
	return b, nil
}

// RandomFixedBatches returns count deterministic random batches for
// validation, from a stream disjoint from every training step's (another
// purpose), so the same seed gives the same batches and never a training
// batch.
func RandomFixedBatches(vocab, seqLen, batchSize, count int, seed uint64) ([]Batch, error) {
	if err := checkRandomShape(vocab, seqLen, batchSize); err != nil {
		return nil, fmt.Errorf("random validation batches: %w", err)
	}
	if count < 0 {
		return nil, fmt.Errorf("random validation batches: count %d, want >= 0", count)
	}
	out := make([]Batch, count)
	for i := range out {
		out[i] = newRandomBatch(batchSize, seqLen)
		for r := 0; r < batchSize; r++ {
			fillRandomRow(out[i], r, uint64(vocab), mix(seed, purposeRandomVal, uint64(i), uint64(r)))
		}
	}
	return out, nil
}

// newRandomBatch allocates a B×T batch with Pos 0..T-1 per row; Tokens and
// Targets are left for fillRandomRow to overwrite entirely.
func newRandomBatch(b, t int) Batch {
	out := Batch{B: b, T: t, Tokens: make([]int32, b*t), Targets: make([]int32, b*t), Pos: make([]int32, b*t)}
	for j := range t {
		out.Pos[j] = int32(j)
	}
	for r := 1; r < b; r++ {
		copy(out.Pos[r*t:(r+1)*t], out.Pos[:t])
	}
	return out
}

// fillRandomRow writes row r from one PCG seeded by rowSeed: seqLen+1 draws,
// inputs the first seqLen and targets the last seqLen. The generator lives on
// the stack; nothing is allocated per token.
func fillRandomRow(b Batch, r int, vocab, rowSeed uint64) {
	inc := rng{s: rowSeed} // second seed word, derived from the first
	var g rand.PCG
	g.Seed(rowSeed, inc.next())
	tok, tgt := b.Tokens[r*b.T:(r+1)*b.T], b.Targets[r*b.T:(r+1)*b.T]
	prev := int32(uniform(&g, vocab))
	for j := range tok {
		next := int32(uniform(&g, vocab))
		tok[j], tgt[j] = prev, next
		prev = next
	}
}

// uniform returns a uniform integer in [0, n), n > 0 (Lemire's unbiased
// multiply-shift; the rejection is rare for n far below 2⁶⁴).
func uniform(g *rand.PCG, n uint64) uint64 {
	hi, lo := bits.Mul64(g.Uint64(), n)
	if lo < n {
		thresh := -n % n
		for lo < thresh {
			hi, lo = bits.Mul64(g.Uint64(), n)
		}
	}
	return hi
}
