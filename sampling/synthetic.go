package sampling

import (
	"fmt"
	"math"
	"strings"
)

// Synthetic data sets with a chosen length distribution, for measuring
// batching strategies on something unlike the embedded corpus. Their text is
// cut from the embedded corpus at seeded offsets, so it is real text.
const (
	// SyntheticBimodal: 70% short messages (16–128 tokens, uniform) and 30%
	// long ones (normal, mean 1200, s.d. 400, clipped to 200..4000).
	SyntheticBimodal = "synthetic:bimodal"
	// SyntheticLogNormal: lengths log-normal with median 300, sigma 0.6.
	SyntheticLogNormal = "synthetic:lognormal"
)

// syntheticDocs is the size of a synthetic set named as a data path.
const syntheticDocs = 20000

// IsSynthetic reports whether a data path names a synthetic data set.
func IsSynthetic(path string) bool { return strings.HasPrefix(path, "synthetic:") }

// SyntheticDocuments returns n deterministic documents of the named
// distribution.
func SyntheticDocuments(name string, n int, seed uint64) ([]Document, error) {
	if n <= 0 {
		return nil, fmt.Errorf("synthetic data: n = %d, want > 0", n)
	}
	c, err := DefaultCorpus()
	if err != nil {
		return nil, err
	}
	stream := concat(c.Train)
	r := rng{s: mix(seed, purposeSample, hashString(name))}
	normal := func() float64 { // Box–Muller
		u1, u2 := r.float64(), r.float64()
		return math.Sqrt(-2*math.Log(1-u1)) * math.Cos(2*math.Pi*u2)
	}
	docs := make([]Document, n)
	for i := range docs {
		var l int
		switch name {
		case SyntheticBimodal:
			if r.float64() < 0.7 {
				l = 16 + r.intn(113)
			} else {
				l = int(min(4000, max(200, 1200+400*normal())))
			}
		case SyntheticLogNormal:
			l = int(min(8000, max(8, 300*math.Exp(0.6*normal()))))
		default:
			return nil, fmt.Errorf("synthetic data: unknown set %q, want %q or %q", name, SyntheticBimodal, SyntheticLogNormal)
		}
		start := r.intn(len(stream) - l)
		docs[i] = Document{Name: fmt.Sprintf("%s#%d", name, i), Tokens: stream[start : start+l]}
	}
	return docs, nil
}
