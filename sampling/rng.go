package sampling

import "math/bits"

// rng is a SplitMix64 generator. Samplers derive a fresh rng from
// (seed, purpose, epoch, step, rank, ...) with mix instead of carrying one
// long-lived stream, so any position can be reproduced in O(1) and a sampler's
// State never has to hold generator internals.
type rng struct{ s uint64 }

func (r *rng) next() uint64 {
	r.s += 0x9e3779b97f4a7c15
	z := r.s
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// intn returns a uniform integer in [0, n) (Lemire's unbiased multiply-shift);
// n must be positive.
func (r *rng) intn(n int) int {
	un := uint64(n)
	hi, lo := bits.Mul64(r.next(), un)
	if lo < un {
		thresh := -un % un
		for lo < thresh {
			hi, lo = bits.Mul64(r.next(), un)
		}
	}
	return int(hi)
}

// float64 returns a uniform value in [0, 1).
func (r *rng) float64() float64 { return float64(r.next()>>11) / (1 << 53) }

// shuffle permutes idx uniformly (Fisher–Yates).
func (r *rng) shuffle(idx []int) { shuffleOf(r, idx) }

// shuffleOf is shuffle on any integer slice: the same swaps for the same
// length, so a compact index list gets the permutation an []int would.
func shuffleOf[T int | int32 | uint32](r *rng, idx []T) {
	for i := len(idx) - 1; i > 0; i-- {
		j := r.intn(i + 1)
		idx[i], idx[j] = idx[j], idx[i]
	}
}

// mix hashes a list of words into one seed; distinct lists give independent
// streams for all practical purposes.
func mix(words ...uint64) uint64 {
	h := uint64(0x6a09e667f3bcc908)
	for _, w := range words {
		r := rng{s: h ^ w}
		h = r.next()
	}
	return h
}

// Purposes of derived streams, so two uses of one seed never share a stream.
const (
	purposeWindow uint64 = iota + 1
	purposeFixed
	purposeSplit
	purposeBucketShuffle
	purposeStepShuffle
	purposePackShuffle
	purposeSample
	purposeNaive
	purposeWindowDeal
)
