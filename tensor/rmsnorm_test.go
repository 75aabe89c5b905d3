package tensor

import (
	"math"
	"testing"
)

// rmsnorm64 is the float64 definition the kernel is checked against.
func rmsnorm64(x, w []float64, n, c int, eps float64) []float64 {
	out := make([]float64, n*c)
	for i := 0; i < n; i++ {
		var ss float64
		for j := 0; j < c; j++ {
			ss += x[i*c+j] * x[i*c+j]
		}
		r := 1 / math.Sqrt(ss/float64(c)+eps)
		for j := 0; j < c; j++ {
			out[i*c+j] = x[i*c+j] * r * w[j]
		}
	}
	return out
}

func TestRMSNormForward(t *testing.T) {
	r := newRNG(10)
	const eps = 1e-5
	for _, n := range testSizes {
		for _, c := range []int{1, 3, 64, 67} {
			x, w := randVec(r, n*c, 2), randVec(r, c, 1.5)
			out, rstd := make([]float32, n*c), make([]float32, n)
			RMSNormForward(out, rstd, x, w, n, c, eps)
			checkClose(t, "out "+sizeName(n, c), out, rmsnorm64(to64(x), to64(w), n, c, eps), 1e-6, 1e-5)
		}
	}
}

func TestRMSNormGradient(t *testing.T) {
	r := newRNG(11)
	const eps = 1e-3
	for _, sz := range [][2]int{{1, 1}, {1, 5}, {3, 7}, {4, 16}} {
		n, c := sz[0], sz[1]
		x, w := randVec(r, n*c, 2), randVec(r, c, 1.5)
		g := randVec(r, n*c, 1) // loss = Σ g∘out
		loss := func(x64, w64 []float64) float64 {
			out := rmsnorm64(x64, w64, n, c, eps)
			s := 0.0
			for i, v := range out {
				s += float64(g[i]) * v
			}
			return s
		}
		x64, w64 := to64(x), to64(w)
		wantDx := numGrad(func(v []float64) float64 { return loss(v, w64) }, x64, 1e-6)
		wantDw := numGrad(func(v []float64) float64 { return loss(x64, v) }, w64, 1e-6)

		out, rstd := make([]float32, n*c), make([]float32, n)
		RMSNormForward(out, rstd, x, w, n, c, eps)
		din0, dw0 := randVec(r, n*c, 1), randVec(r, c, 1) // backward accumulates
		din, dw := append([]float32(nil), din0...), append([]float32(nil), dw0...)
		RMSNormBackward(din, dw, g, x, w, rstd, n, c)
		checkClose(t, "din "+sizeName(n, c), sub(din, din0), wantDx, 1e-4, 1e-3)
		checkClose(t, "dweight "+sizeName(n, c), sub(dw, dw0), wantDw, 1e-4, 1e-3)
	}
}

func TestRMSNormThreadsBitwise(t *testing.T) {
	r := newRNG(12)
	n, c := 301, 130
	x, w, g := randVec(r, n*c, 2), randVec(r, c, 1), randVec(r, n*c, 1)
	checkThreadsBitwise(t, []string{"out", "din", "dweight"}, func() [][]float32 {
		out, rstd := make([]float32, n*c), make([]float32, n)
		RMSNormForward(out, rstd, x, w, n, c, 1e-5)
		din, dw := make([]float32, n*c), make([]float32, c)
		RMSNormBackward(din, dw, g, x, w, rstd, n, c)
		return [][]float32{out, din, dw}
	})
}
