package moe

import "github.com/moetrain/moetrain/tensor"

// Experts describes a bank of E FFN experts d→h→d with exact GELU, weights
// W1 [E, h, d] and W2 [E, d, h] (y = x·Wᵀ). Each expert runs as two GEMMs
// over its contiguous block of gathered rows; rows of expert e are
// [offsets[e], offsets[e+1]).
type Experts struct {
	D, H int
}

// Forward computes, for every slot row s of x [S, d] (gathered inputs),
// hpre = x·W1ₑᵀ, hact = GELU(hpre), y = hact·W2ₑᵀ. hpre and hact [S, h] are
// kept for the backward. Experts run concurrently over the thread budget
// (their outputs are disjoint row blocks, so results do not depend on the
// thread count); each expert's GEMMs may split further.
func (ex Experts) Forward(y, hpre, hact, x, w1, w2 []float32, offsets []int) {
	d, h := ex.D, ex.H
	eachExpert(offsets, func(e, lo, c int) {
		tensor.Gemm(false, true, c, h, d, x[lo*d:], d, w1[e*h*d:], d, 0, hpre[lo*h:], h)
		tensor.GELUForward(hact[lo*h:(lo+c)*h], hpre[lo*h:(lo+c)*h])
		tensor.Gemm(false, true, c, d, h, hact[lo*h:], h, w2[e*d*h:], h, 0, y[lo*d:], d)
	})
}

// Backward, given dy [S, d], accumulates dw1, dw2 and OVERWRITES dx [S, d]
// (the gradient of the gathered rows). dhact and dhpre [S, h] are scratch.
// Experts run concurrently (each one's outputs are disjoint), like Forward.
func (ex Experts) Backward(dx, dw1, dw2, dhact, dhpre, dy, x, hpre, hact, w1, w2 []float32, offsets []int) {
	d, h := ex.D, ex.H
	eachExpert(offsets, func(e, lo, c int) {
		rows := func(buf []float32, w int) []float32 { return buf[lo*w : (lo+c)*w] }
		tensor.Gemm(true, false, d, h, c, dy[lo*d:], d, hact[lo*h:], h, 1, dw2[e*d*h:], h)
		tensor.Gemm(false, false, c, h, d, dy[lo*d:], d, w2[e*d*h:], h, 0, dhact[lo*h:], h)
		clear(rows(dhpre, h))
		tensor.GELUBackward(rows(dhpre, h), rows(dhact, h), rows(hpre, h))
		tensor.Gemm(true, false, h, d, c, dhpre[lo*h:], h, x[lo*d:], d, 1, dw1[e*h*d:], d)
		tensor.Gemm(false, false, c, d, h, dhpre[lo*h:], h, w1[e*h*d:], d, 0, dx[lo*d:], d)
	})
}

// eachExpert calls fn(e, lo, c) for every expert e that has rows, c of them
// from row lo, spread over threads by forExperts.
func eachExpert(offsets []int, fn func(e, lo, c int)) {
	forExperts(offsets, func(e0, e1 int) {
		for e := e0; e < e1; e++ {
			if lo, c := offsets[e], offsets[e+1]-offsets[e]; c > 0 {
				fn(e, lo, c)
			}
		}
	})
}

// forExperts calls fn on contiguous expert ranges concurrently, one range per
// thread, cut so that each range holds about the same number of rows (an
// expert goes to the range where its first row falls). The cut only decides
// which goroutine runs an expert, never what it computes.
func forExperts(offsets []int, fn func(e0, e1 int)) {
	ne := len(offsets) - 1
	rows := offsets[ne]
	nt := min(tensor.Threads(), ne)
	if nt <= 1 || rows == 0 {
		fn(0, ne)
		return
	}
	var cutBuf [65]int
	cut := cutBuf[:0]
	if nt+1 > len(cutBuf) {
		cut = make([]int, 0, nt+1)
	}
	cut = append(cut, 0)
	for e := 0; e < ne; e++ {
		for g := len(cut); g < nt && offsets[e] >= g*rows/nt; g++ {
			cut = append(cut, e)
		}
	}
	for len(cut) <= nt {
		cut = append(cut, ne)
	}
	tensor.ParallelFor(nt, 1, func(g0, g1 int) {
		for g := g0; g < g1; g++ {
			if cut[g] < cut[g+1] {
				fn(cut[g], cut[g+1])
			}
		}
	})
}
