package gputest

import (
	"errors"
	"math"
	"testing"
)

func TestRelNorm(t *testing.T) {
	for _, c := range []struct {
		got, want []float32
		r         float64
	}{
		{[]float32{1, 2}, []float32{1, 2}, 0},
		{[]float32{3, 4}, []float32{0, 0}, 5},
		{[]float32{2, 0}, []float32{1, 0}, 1},
		{[]float32{1}, []float32{1, 2}, math.Inf(1)},
		{[]float32{float32(math.NaN())}, []float32{1}, math.Inf(1)},
		{[]float32{float32(math.Inf(1))}, []float32{1}, math.Inf(1)},
	} {
		if r := RelNorm(c.got, c.want); r != c.r {
			t.Errorf("RelNorm(%v, %v) = %v, want %v", c.got, c.want, r, c.r)
		}
	}
}

// Once opens the value the first time only and hands it to every caller;
// after a failed open each caller's test is skipped (without
// MOETRAIN_REQUIRE_GPU).
func TestOnce(t *testing.T) {
	opened := 0
	get := Once(func() (int, error) { opened++; return 42, nil })
	if get(t) != 42 || get(t) != 42 || opened != 1 {
		t.Fatalf("opened %d times", opened)
	}
	t.Setenv("MOETRAIN_REQUIRE_GPU", "")
	failed := 0
	bad := Once(func() (int, error) { failed++; return 0, errors.New("no device") })
	for i := 0; i < 2; i++ {
		var skipped, reached bool
		t.Run("failed-open", func(t *testing.T) {
			defer func() { skipped = t.Skipped() }()
			bad(t)
			reached = true
		})
		if !skipped || reached {
			t.Fatalf("call %d after a failed open: skipped %v, went on %v", i, skipped, reached)
		}
	}
	if failed != 1 {
		t.Fatalf("failed open tried %d times", failed)
	}
}
