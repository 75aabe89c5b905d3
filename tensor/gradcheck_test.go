package tensor

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// Shared test helpers: float64 central finite differences, random data and
// tolerance comparisons.

// numGrad returns the central finite-difference gradient of f at x in
// float64: (f(x+h·e_i) − f(x−h·e_i)) / 2h for each i. x is restored.
func numGrad(f func(x []float64) float64, x []float64, h float64) []float64 {
	g := make([]float64, len(x))
	for i := range x {
		old := x[i]
		x[i] = old + h
		fp := f(x)
		x[i] = old - h
		fm := f(x)
		x[i] = old
		g[i] = (fp - fm) / (2 * h)
	}
	return g
}

func newRNG(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)) }

// randVec returns n values uniform in [-a, a).
func randVec(r *rand.Rand, n int, a float32) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = a * (2*r.Float32() - 1)
	}
	return x
}

func to64(x []float32) []float64 {
	y := make([]float64, len(x))
	for i, v := range x {
		y[i] = float64(v)
	}
	return y
}

// sub returns a − b elementwise in float64 (used to read what a backward
// accumulated on top of a non-zero initial gradient).
func sub(a, b []float32) []float64 {
	y := make([]float64, len(a))
	for i := range a {
		y[i] = float64(a[i]) - float64(b[i])
	}
	return y
}

// checkClose fails t for the first elements where |got−want| > atol +
// rtol·|want| (NaNs never match; equal infinities do).
func checkClose[G, W float32 | float64](t *testing.T, name string, got []G, want []W, atol, rtol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: length %d, want %d", name, len(got), len(want))
	}
	bad := 0
	for i := range got {
		g, w := float64(got[i]), float64(want[i])
		if g == w {
			continue
		}
		if math.IsNaN(g) || math.IsNaN(w) || math.IsInf(g, 0) || math.IsInf(w, 0) || math.Abs(g-w) > atol+rtol*math.Abs(w) {
			if bad < 5 {
				t.Errorf("%s[%d] = %v, want %v", name, i, g, w)
			}
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d elements out of tolerance (atol %g, rtol %g)", name, bad, len(got), atol, rtol)
	}
}

// checkBitwise fails t unless got and want are bitwise identical.
func checkBitwise(t *testing.T, name string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: length %d, want %d", name, len(got), len(want))
	}
	for i := range got {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s[%d] = %v (bits %08x), want %v (bits %08x): not bitwise identical", name, i,
				got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]))
		}
	}
}

// withThreads runs fn under each thread budget in ts, restoring the budget.
func withThreads(t testing.TB, ts []int, fn func(th int)) {
	t.Helper()
	old := Threads()
	defer SetThreads(old)
	for _, th := range ts {
		SetThreads(th)
		fn(th)
	}
}

// checkThreadsBitwise runs run under 1, 2 and 3 threads and checks that
// each of its outputs (named by names, in order) is bitwise the same as
// under one thread.
func checkThreadsBitwise(t *testing.T, names []string, run func() [][]float32) {
	t.Helper()
	var first [][]float32
	withThreads(t, []int{1, 2, 3}, func(th int) {
		outs := run()
		if len(outs) != len(names) {
			t.Fatalf("%d outputs for %d names", len(outs), len(names))
		}
		if th == 1 {
			first = outs
			return
		}
		for i, name := range names {
			checkBitwise(t, fmt.Sprintf("%s threads %d", name, th), outs[i], first[i])
		}
	})
}

// testSizes are row/column counts used across tests: 1, primes, powers of
// two and non-multiples of the tile sizes.
var testSizes = []int{1, 2, 3, 7, 13, 64, 67, 130}

func sizeName(xs ...int) string {
	s := ""
	for i, x := range xs {
		if i > 0 {
			s += "x"
		}
		s += fmt.Sprint(x)
	}
	return s
}

func TestNumGradSelf(t *testing.T) {
	// The helper itself: d/dx Σ x³ = 3x².
	x := []float64{-1.5, 0, 0.25, 2}
	g := numGrad(func(x []float64) float64 {
		s := 0.0
		for _, v := range x {
			s += v * v * v
		}
		return s
	}, x, 1e-5)
	want := []float64{6.75, 0, 0.1875, 12}
	checkClose(t, "grad", g, want, 1e-8, 1e-8)
}

// forEachRowPath runs fn with the portable row kernels and, where the CPU
// has them, the vector ones.
func forEachRowPath(t *testing.T, fn func(t *testing.T)) {
	t.Helper()
	saved := useAVX2Rows
	defer func() { useAVX2Rows = saved }()
	paths := []bool{false}
	if saved {
		paths = append(paths, true)
	}
	for _, p := range paths {
		useAVX2Rows = p
		t.Run(fmt.Sprintf("vector=%v", p), fn)
	}
}
