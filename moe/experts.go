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
// kept for the backward. The S rows are cut into equal blocks (splitFor,
// eachPiece) whatever expert they belong to, so a heavily loaded expert is shared out
// like any other; every row's result is the same whichever block computes
// it, so results do not depend on the thread count.
func (ex Experts) Forward(y, hpre, hact, x, w1, w2 []float32, offsets []int) {
	d, h := ex.D, ex.H
	blocks := splitFor(offsets[len(offsets)-1] - offsets[0])
	forUnits(blocks, func(u int) {
		eachPiece(offsets, u, blocks, func(e, lo, c int) {
			tensor.GemmSerial(false, true, c, h, d, x[lo*d:], d, w1[e*h*d:], d, 0, hpre[lo*h:], h)
			tensor.GELUForwardSerial(hact[lo*h:(lo+c)*h], hpre[lo*h:(lo+c)*h])
			tensor.GemmSerial(false, true, c, d, h, hact[lo*h:], h, w2[e*d*h:], h, 0, y[lo*d:], d)
		})
	})
}

// Backward, given dy [S, d], accumulates dw1, dw2 and OVERWRITES dx [S, d]
// (the gradient of the gathered rows). dhact and dhpre [S, h] are scratch.
// With one thread (or too few rows to split), expert by expert. Otherwise two passes: the row
// gradients by equal row blocks as in Forward, together with strips of
// h-columns of every dw2ₑ += dyᵀ·hact; then every dw1ₑ += dhpreᵀ·x by strips
// of h (they need the whole expert's dhpre). Weight gradients are split by
// output, never by the rows they sum over, so results do not depend on the
// thread count.
func (ex Experts) Backward(dx, dw1, dw2, dhact, dhpre, dy, x, hpre, hact, w1, w2 []float32, offsets []int) {
	d, h := ex.D, ex.H
	ne := len(offsets) - 1
	blocks := splitFor(offsets[ne] - offsets[0])
	if blocks == 1 { // one thread, or too few rows to split: expert by expert, its rows still in cache
		for e := 0; e < ne; e++ {
			if lo, c := offsets[e], offsets[e+1]-offsets[e]; c > 0 {
				tensor.GemmSerial(true, false, d, h, c, dy[lo*d:], d, hact[lo*h:], h, 1, dw2[e*d*h:], h)
				expertRowsBackward(d, h, e, lo, c, dx, dhact, dhpre, dy, hpre, w1, w2)
				tensor.GemmSerial(true, false, h, d, c, dhpre[lo*h:], h, x[lo*d:], d, 1, dw1[e*h*d:], d)
			}
		}
		return
	}
	// The weight gradients come in one strip of h per thread (every strip
	// packs the rows it sums over once more, so no more strips than
	// threads): strip j for every expert with rows, through gemm(e, j0, j1,
	// lo, c).
	ns := max(1, blocks/blocksPerThread)
	strips := func(j int, gemm func(e, j0, j1, lo, c int)) {
		j0, j1 := strip(h, j, ns)
		for e := 0; e < ne; e++ {
			if lo, c := offsets[e], offsets[e+1]-offsets[e]; c > 0 && j0 < j1 {
				gemm(e, j0, j1, lo, c)
			}
		}
	}
	forUnits(blocks+ns, func(u int) {
		if u >= blocks {
			strips(u-blocks, func(e, j0, j1, lo, c int) {
				tensor.GemmSerial(true, false, d, j1-j0, c, dy[lo*d:], d, hact[lo*h+j0:], h, 1, dw2[e*d*h+j0:], h)
			})
			return
		}
		eachPiece(offsets, u, blocks, func(e, lo, c int) {
			expertRowsBackward(d, h, e, lo, c, dx, dhact, dhpre, dy, hpre, w1, w2)
		})
	})
	forUnits(ns, func(u int) {
		strips(u, func(e, j0, j1, lo, c int) {
			tensor.GemmSerial(true, false, j1-j0, d, c, dhpre[lo*h+j0:], h, x[lo*d:], d, 1, dw1[e*h*d+j0*d:], d)
		})
	})
}

// expertRowsBackward computes the row gradients of rows [lo, lo+c) of
// expert e: dhact = dy·W2ₑ, dhpre = GELU'(hpre)∘dhact, dx = dhpre·W1ₑ.
func expertRowsBackward(d, h, e, lo, c int, dx, dhact, dhpre, dy, hpre, w1, w2 []float32) {
	rows := func(buf []float32, w int) []float32 { return buf[lo*w : (lo+c)*w] }
	tensor.GemmSerial(false, false, c, h, d, dy[lo*d:], d, w2[e*d*h:], h, 0, dhact[lo*h:], h)
	clear(rows(dhpre, h))
	tensor.GELUBackwardSerial(rows(dhpre, h), rows(dhact, h), rows(hpre, h))
	tensor.GemmSerial(false, false, c, d, h, dhpre[lo*h:], h, w1[e*h*d:], d, 0, dx[lo*d:], d)
}

// minBlockRows is the fewest rows worth a block of their own: below it a
// block's GEMMs are too small to pay for a goroutine and for packing every
// touched expert's weights once more.
const minBlockRows = 64

// blocksPerThread: each thread's share comes in this many blocks, taken in
// turn, so that a thread that starts late or is descheduled takes fewer
// (every block packs the weights of the experts it touches once more, so
// not many).
const blocksPerThread = 2

// splitFor returns how many blocks rows rows are cut into: blocksPerThread
// per thread of the budget, each of at least minBlockRows rows, at least 1.
func splitFor(rows int) int {
	nt := tensor.Threads()
	if nt <= 1 {
		return 1
	}
	return max(1, min(nt*blocksPerThread, rows/minBlockRows))
}

// forUnits calls fn(u) for every u < n over the thread budget, each call on
// one goroutine (units taken in turn; n = 1: on the calling goroutine).
func forUnits(n int, fn func(u int)) {
	tensor.ParallelForThreads(n, 1, tensor.Threads(), func(lo, hi int) {
		for u := lo; u < hi; u++ {
			fn(u)
		}
	})
}

// eachPiece calls piece(e, lo, c) for every part of row block u of nb (the
// expert-major rows [offsets[0], offsets[E]) cut into nb equal blocks) that
// belongs to one expert e: c > 0 rows from row lo, in increasing order.
func eachPiece(offsets []int, u, nb int, piece func(e, lo, c int)) {
	ne := len(offsets) - 1
	s0, s := offsets[0], offsets[ne]-offsets[0]
	r0, r1 := s0+s*u/nb, s0+s*(u+1)/nb
	for e := 0; e < ne; e++ {
		if lo, hi := max(offsets[e], r0), min(offsets[e+1], r1); lo < hi {
			piece(e, lo, hi-lo)
		}
	}
}

// strip returns part t of n columns cut into nt parts, on multiples of 16
// (the width of the GEMM kernels' tiles or half of it).
func strip(n, t, nt int) (j0, j1 int) {
	units := (n + 15) / 16
	return min(n, units*t/nt*16), min(n, units*(t+1)/nt*16)
}
