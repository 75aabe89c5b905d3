package gputest

import (
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
