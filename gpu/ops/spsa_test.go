package ops

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/moetrain/moetrain/spsa"
)

// TestSPSAKernelsEqualHost: the device's perturbation and update equal
// spsa.Perturb and spsa.ApplyTerms bit for bit, on lengths around the
// 64-element direction block and the grid size, in and out of place, with
// coefficients of mixed magnitudes.
func TestSPSAKernelsEqualHost(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{1, 63, 64, 65, 1000, 100003, 1<<20 + 7} {
		x := randn(rng, n, 1)
		seed := rng.Uint64()
		h := float32(1e-3)
		want := make([]float32, n)
		spsa.Perturb(want, x, seed, h, 2)
		src := upload(t, o, x)
		dst := poisoned(t, o, n)
		if err := o.SPSAPerturb(dst, src, seed, h, n); err != nil {
			t.Fatal(err)
		}
		spsaSameBits(t, "perturb", n, download[float32](t, o, dst, n), want)
		// In place: src is both.
		if err := o.SPSAPerturb(src, src, seed, h, n); err != nil {
			t.Fatal(err)
		}
		spsaSameBits(t, "perturb in place", n, download[float32](t, o, src, n), want)

		for _, k := range []int{1, 3, 9} {
			seeds := make([]uint64, k)
			coefs := make([]float32, k)
			for j := range k {
				seeds[j] = rng.Uint64()
				coefs[j] = float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(7)-6)))
			}
			want := append([]float32(nil), x...)
			spsa.ApplyTerms(want, seeds, coefs, 2)
			p := upload(t, o, x)
			if err := o.SPSAApply(p, upload(t, o, seeds), upload(t, o, coefs), k, n); err != nil {
				t.Fatal(err)
			}
			spsaSameBits(t, "apply", n, download[float32](t, o, p, n), want)
		}
	}
}

func spsaSameBits(t *testing.T, what string, n int, got, want []float32) {
	t.Helper()
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s, n=%d: element %d is %v (%#08x) on the device, %v (%#08x) on the host",
				what, n, i, got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]))
		}
	}
}
