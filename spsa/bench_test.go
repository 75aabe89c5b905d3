package spsa

import (
	"context"
	"testing"
)

// BenchmarkApply: one step's update of a reference-model-sized buffer
// (9,644,288 parameters) with 4 workers × 1 direction.
func BenchmarkApply(b *testing.B) {
	p := randParams(9644288, 1)
	u := NewUpdater(DefaultConfig(), 1)
	e := []Entry{{1, 0, 3}, {2, 0, 250}, {3, 0, 17}, {4, 0, 100}}
	b.SetBytes(int64(4 * len(p)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := u.Apply(p, int64(i), e); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPerturb: one perturbation of a reference-model-sized buffer.
func BenchmarkPerturb(b *testing.B) {
	src := randParams(9644288, 1)
	dst := make([]float32, len(src))
	b.SetBytes(int64(4 * len(src)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		Perturb(dst, src, uint64(i), 1e-3, 1)
	}
}

// BenchmarkStepOverhead: a whole step around a trivial loss (what SPSA adds
// to the two forwards per direction). It allocates a few small objects per
// step (the closure of each parallel pass over the parameters, the test
// exchange's member list), never per parameter.
func BenchmarkStepOverhead(b *testing.B) {
	p := randParams(1<<16, 1)
	w, err := NewWorker(DefaultConfig(), 1, p, make([]float32, len(p)), 0, 1)
	if err != nil {
		b.Fatal(err)
	}
	loss := func() (float64, error) { return float64(p[0]), nil }
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := w.StepOnce(ctx, soloExchange{1}, loss); err != nil {
			b.Fatal(err)
		}
	}
}
