// Package gputest is what GPU tests share: the rule for skipping where no
// CUDA driver or GPU answers (MOETRAIN_REQUIRE_GPU=1 turns the skip into a
// failure, for runs on GPU machines), the device a package's tests open
// once, and the relative-norm comparison the kernel and model tests use.
// Test code only: nothing else may import it.
package gputest

import (
	"math"
	"os"
	"sync"
	"testing"
)

// SkipOrFail ends t because err says no GPU is usable: a skip, or with
// MOETRAIN_REQUIRE_GPU set, a failure.
func SkipOrFail(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("MOETRAIN_REQUIRE_GPU") == "" {
		t.Skipf("no GPU: %v", err)
	}
	t.Fatalf("GPU required: %v", err)
}

// Once returns the getter of a value a package's GPU tests share (a
// context, a device): open runs the first time the getter is called, once
// per process, and every test that calls it after open failed ends by
// SkipOrFail.
func Once[T any](open func() (T, error)) func(testing.TB) T {
	get := sync.OnceValues(open)
	return func(t testing.TB) T {
		t.Helper()
		v, err := get()
		if err != nil {
			SkipOrFail(t, err)
		}
		return v
	}
}

// RelNorm is ‖got − want‖ / ‖want‖ (‖got − want‖ when want is zero); a NaN
// or Inf in got, or a length mismatch, gives +Inf.
func RelNorm(got, want []float32) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var num, den float64
	for i := range got {
		g, w := float64(got[i]), float64(want[i])
		if math.IsNaN(g) || math.IsInf(g, 0) {
			return math.Inf(1)
		}
		num += (g - w) * (g - w)
		den += w * w
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}
