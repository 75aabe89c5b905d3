package moe

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/moetrain/moetrain/tensor"
)

// expertsRef is the naive float64 reference of Experts.Forward and
// Backward: per expert, per row, plain loops (GELU from
// tensor.GELUForwardRef / GELUBackwardRef).
func expertsRef(d, h int, x, w1, w2, dy []float32, offsets []int) (y, dx, dw1, dw2 []float64) {
	s := offsets[len(offsets)-1]
	y, dx = make([]float64, s*d), make([]float64, s*d)
	dw1, dw2 = make([]float64, len(w1)), make([]float64, len(w2))
	for e := 0; e+1 < len(offsets); e++ {
		W1, W2 := w1[e*h*d:(e+1)*h*d], w2[e*d*h:(e+1)*d*h]
		for row := offsets[e]; row < offsets[e+1]; row++ {
			xr, gr := x[row*d:(row+1)*d], dy[row*d:(row+1)*d]
			pre := make([]float32, h)
			for j := 0; j < h; j++ {
				var acc float64
				for i := 0; i < d; i++ {
					acc += float64(xr[i]) * float64(W1[j*d+i])
				}
				pre[j] = float32(acc)
			}
			act := make([]float32, h)
			tensor.GELUForwardRef(act, pre)
			dact := make([]float32, h)
			for i := 0; i < d; i++ {
				var acc float64
				for j := 0; j < h; j++ {
					acc += float64(act[j]) * float64(W2[i*h+j])
					dact[j] += gr[i] * W2[i*h+j]
					dw2[e*d*h+i*h+j] += float64(gr[i]) * float64(act[j])
				}
				y[row*d+i] = acc
			}
			dpre := make([]float32, h)
			tensor.GELUBackwardRef(dpre, dact, pre)
			for j := 0; j < h; j++ {
				for i := 0; i < d; i++ {
					dx[row*d+i] += float64(dpre[j]) * float64(W1[j*d+i])
					dw1[e*h*d+j*d+i] += float64(dpre[j]) * float64(xr[i])
				}
			}
		}
	}
	return y, dx, dw1, dw2
}

// TestExpertsMatchReference: on random shapes and loads (empty experts, one
// expert holding most rows) Forward and Backward match the naive reference,
// and are bitwise identical for 1 to 5 threads.
func TestExpertsMatchReference(t *testing.T) {
	prev := tensor.Threads()
	defer tensor.SetThreads(prev)
	r := rand.New(rand.NewPCG(21, 5))
	rnd := func(n int, scale float64) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(r.NormFloat64() * scale)
		}
		return v
	}
	for trial := 0; trial < 12; trial++ {
		d, h, ne := 1+r.IntN(40), 1+r.IntN(70), 1+r.IntN(6)
		offsets := make([]int, ne+1)
		hot := r.IntN(ne)
		for e := 0; e < ne; e++ {
			c := r.IntN(90)
			switch {
			case e == hot:
				c += 150 + r.IntN(200)
			case r.IntN(3) == 0:
				c = 0
			}
			offsets[e+1] = offsets[e] + c
		}
		s := offsets[ne]
		x, dy := rnd(s*d, 1), rnd(s*d, 1)
		w1, w2 := rnd(ne*h*d, 1/math.Sqrt(float64(d))), rnd(ne*d*h, 1/math.Sqrt(float64(h)))
		dw1Init, dw2Init := rnd(len(w1), 0.1), rnd(len(w2), 0.1) // Backward accumulates
		yRef, dxRef, dw1Ref, dw2Ref := expertsRef(d, h, x, w1, w2, dy, offsets)
		var first [][]float32
		for threads := 1; threads <= 5; threads++ {
			tensor.SetThreads(threads)
			ex := Experts{D: d, H: h}
			y, hpre, hact := make([]float32, s*d), make([]float32, s*h), make([]float32, s*h)
			ex.Forward(y, hpre, hact, x, w1, w2, offsets)
			dx, dhact, dhpre := make([]float32, s*d), make([]float32, s*h), make([]float32, s*h)
			dw1, dw2 := slices.Clone(dw1Init), slices.Clone(dw2Init)
			ex.Backward(dx, dw1, dw2, dhact, dhpre, dy, x, hpre, hact, w1, w2, offsets)
			label := fmt.Sprintf("trial %d (d=%d h=%d offsets %v) threads %d", trial, d, h, offsets, threads)
			if threads == 1 {
				closeTo(t, label+" y", y, yRef, nil)
				closeTo(t, label+" dx", dx, dxRef, nil)
				closeTo(t, label+" dw1", dw1, dw1Ref, dw1Init)
				closeTo(t, label+" dw2", dw2, dw2Ref, dw2Init)
				first = [][]float32{y, dx, dw1, dw2}
				continue
			}
			for i, got := range [][]float32{y, dx, dw1, dw2} {
				if !slices.Equal(got, first[i]) {
					t.Fatalf("%s: output %d differs from 1 thread", label, i)
				}
			}
		}
	}
}

// closeTo checks got ≈ base + want elementwise (base nil = 0) with a
// tolerance relative to the magnitude of the reference.
func closeTo(t *testing.T, label string, got []float32, want []float64, base []float32) {
	t.Helper()
	for i, g := range got {
		w := want[i]
		if base != nil {
			w += float64(base[i])
		}
		if math.Abs(float64(g)-w) > 1e-4*(1+math.Abs(w)) {
			t.Fatalf("%s: element %d = %v, want %v", label, i, g, w)
		}
	}
}
