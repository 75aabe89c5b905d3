package tensor

import (
	"math"
	"testing"
)

func gelu64(x float64) float64 { return 0.5 * x * (1 + math.Erf(x/math.Sqrt2)) }

// geluInputs covers the body, both tails, zero and tiny values.
func geluInputs() []float32 {
	x := randVec(newRNG(30), 3001, 6)
	for v := float32(-12); v <= 12; v += 0.01 {
		x = append(x, v)
	}
	return append(x, 0, -1e-8, 1e-8, -40, 40, 1e4, -1e4)
}

func TestGELUForward(t *testing.T) { forEachRowPath(t, testGELUForward) }

func testGELUForward(t *testing.T) {
	x := geluInputs()
	want := make([]float64, len(x))
	for i, v := range x {
		want[i] = gelu64(float64(v))
	}
	out, ref := make([]float32, len(x)), make([]float32, len(x))
	GELUForward(out, x)
	GELUForwardRef(ref, x)
	checkClose(t, "gelu vs float64", out, want, 1e-7, 1e-6)
	checkClose(t, "gelu ref vs float64", ref, want, 1e-7, 1e-6)
}

func TestGELUGradient(t *testing.T) { forEachRowPath(t, testGELUGradient) }

func testGELUGradient(t *testing.T) {
	r := newRNG(31)
	x := geluInputs()
	g := randVec(r, len(x), 1)
	wantD := make([]float64, len(x))
	for i, v := range x {
		xi := []float64{float64(v)}
		h := 1e-6 * math.Max(1, math.Abs(xi[0]))
		wantD[i] = float64(g[i]) * numGrad(func(y []float64) float64 { return gelu64(y[0]) }, xi, h)[0]
	}
	din0 := randVec(r, len(x), 1)
	din := append([]float32(nil), din0...)
	GELUBackward(din, g, x)
	checkClose(t, "dgelu", sub(din, din0), wantD, 1e-5, 1e-4)
	ref := append([]float32(nil), din0...)
	GELUBackwardRef(ref, g, x)
	checkClose(t, "dgelu vs ref", sub(din, din0), sub(ref, din0), 1e-6, 1e-5)
}

func TestGELUThreadsBitwise(t *testing.T) {
	forEachRowPath(t, func(t *testing.T) {
		r := newRNG(32)
		n := 3*elemGrain/4*3 + 5 // chunk edges fall at different offsets per thread count
		x, g := randVec(r, n, 4), randVec(r, n, 1)
		checkThreadsBitwise(t, []string{"gelu", "dgelu"}, func() [][]float32 {
			o, d := make([]float32, n), make([]float32, n)
			GELUForward(o, x)
			GELUBackward(d, g, x)
			return [][]float32{o, d}
		})
		// The serial entries give the same bits, over any sub-range.
		o, d := make([]float32, n), make([]float32, n)
		GELUForward(o, x)
		GELUBackward(d, g, x)
		os, ds := make([]float32, n), make([]float32, n)
		for lo := 0; lo < n; {
			hi := min(n, lo+1+r.IntN(n/3))
			GELUForwardSerial(os[lo:hi], x[lo:hi])
			GELUBackwardSerial(ds[lo:hi], g[lo:hi], x[lo:hi])
			lo = hi
		}
		for i := range o {
			if math.Float32bits(o[i]) != math.Float32bits(os[i]) || math.Float32bits(d[i]) != math.Float32bits(ds[i]) {
				t.Fatalf("element %d: serial (%g, %g) vs parallel (%g, %g)", i, os[i], ds[i], o[i], d[i])
			}
		}
	})
}
