package collective

import (
	"math"
	"math/rand/v2"
	"testing"
)

// The vector kernel must match the scalar reference bitwise, in and out of
// place, on lengths around every unrolling boundary.
func TestAddToMatchesGeneric(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for n := 0; n <= 140; n++ {
		for _, mode := range []string{"out", "a", "b"} {
			a := make([]float32, n)
			b := make([]float32, n)
			for i := range a {
				a[i] = float32(rng.NormFloat64() * 1e3)
				b[i] = float32(rng.NormFloat64())
			}
			if n > 3 {
				a[1], b[2], a[3] = float32(math.Inf(1)), float32(math.NaN()), 1e-40
			}
			want := make([]float32, n)
			addToGeneric(want, a, b)
			var dst []float32
			switch mode {
			case "out":
				dst = make([]float32, n)
				addTo(dst, a, b)
			case "a":
				dst = append([]float32(nil), a...)
				addTo(dst, dst, b)
			case "b":
				dst = append([]float32(nil), b...)
				addTo(dst, a, dst)
			}
			for i := range want {
				if math.Float32bits(dst[i]) != math.Float32bits(want[i]) {
					t.Fatalf("n=%d %s: element %d = %v, want %v", n, mode, i, dst[i], want[i])
				}
			}
		}
	}
}
