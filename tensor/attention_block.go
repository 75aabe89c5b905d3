package tensor

import (
	"math"
	"sync"
)

// Blockwise attention geometry. Work units are 64-row blocks (query blocks
// for the forward and dq, key blocks for dk, dv); each unit walks the other
// side in chunks of 256 rows, and each chunk is trimmed to the span of its
// 64-row sub-blocks that are not fully masked, so one Gemm per chunk covers
// it (big enough for Gemm's fast path) while causal and segment masking
// still skip work at 64-row granularity. The chunk boundaries are fixed
// multiples of 256 whatever the thread count or backward schedule, which
// fixes every reduction's order and so makes results bitwise reproducible.
const (
	attnBQ = 64  // query rows per forward / dq unit
	attnBK = 64  // key rows per dk, dv unit
	attnG  = 64  // masking granularity of the trimming
	attnLK = 256 // key chunk of a query block (online-softmax step)
	attnLQ = 256 // query chunk of a key block
)

// Blocks must tile chunks exactly, so the per-pair backward walks the same
// blocks and spans as the two-pass one (compile-time check).
var _ = [1]int{}[attnLQ%attnBQ+attnLK%attnBK+attnLK%attnG+attnLQ%attnG]

// Tile classes against the mask.
const (
	tileMasked  = iota // no (query, key) pair visible: skipped
	tileFull           // every pair visible: no per-element mask
	tilePartial        // some pairs visible: mask per element
)

// tileClass classifies the tile of query rows [t0,t1) × key rows [j0,j1) of
// sequence b.
func (s *AttnShape) tileClass(b, t0, t1, j0, j1 int) int {
	cls := tileFull
	if s.Causal {
		if s.KPos0+j0 > s.QPos0+t1-1 {
			return tileMasked
		}
		if s.KPos0+j1-1 > s.QPos0+t0 {
			cls = tilePartial
		}
	}
	if s.QSeg != nil {
		qmin, qmax := minMax(s.QSeg[b*s.Tq+t0 : b*s.Tq+t1])
		kmin, kmax := minMax(s.KSeg[b*s.Tk+j0 : b*s.Tk+j1])
		if qmax < kmin || kmax < qmin {
			return tileMasked
		}
		if qmin != qmax || kmin != kmax {
			cls = tilePartial
		}
	}
	return cls
}

func minMax(x []int32) (lo, hi int32) {
	lo, hi = x[0], x[0]
	for _, v := range x[1:] {
		lo = min(lo, v)
		hi = max(hi, v)
	}
	return lo, hi
}

// trimKeys returns the span [a,e) of key chunk [c0,c1) covering every 64-row
// key sub-block not fully masked for query rows [t0,t1) (a == e if none),
// and whether any sub-block in the span needs the per-element mask.
func (s *AttnShape) trimKeys(b, t0, t1, c0, c1 int) (a, e int, partial bool) {
	return s.trim(c0, c1, func(x0, x1 int) int { return s.tileClass(b, t0, t1, x0, x1) })
}

// trimQueries is trimKeys with the roles swapped: the span of query chunk
// [c0,c1) that sees key rows [j0,j1).
func (s *AttnShape) trimQueries(b, j0, j1, c0, c1 int) (a, e int, partial bool) {
	return s.trim(c0, c1, func(x0, x1 int) int { return s.tileClass(b, x0, x1, j0, j1) })
}

// keySpans calls f(a, e, partial) for each key chunk of attnLK rows, in
// order, whose trimmed span [a,e) for query rows [t0,t1) of sequence b is
// not empty (trimKeys).
func (s *AttnShape) keySpans(b, t0, t1 int, f func(a, e int, partial bool)) {
	for c0 := 0; c0 < s.Tk; c0 += attnLK {
		if a, e, partial := s.trimKeys(b, t0, t1, c0, min(c0+attnLK, s.Tk)); a < e {
			f(a, e, partial)
		}
	}
}

// querySpans is keySpans with the roles swapped: query chunks of attnLQ rows
// that see key rows [j0,j1) (trimQueries).
func (s *AttnShape) querySpans(b, j0, j1 int, f func(a, e int, partial bool)) {
	for c0 := 0; c0 < s.Tq; c0 += attnLQ {
		if a, e, partial := s.trimQueries(b, j0, j1, c0, min(c0+attnLQ, s.Tq)); a < e {
			f(a, e, partial)
		}
	}
}

func (s *AttnShape) trim(c0, c1 int, class func(x0, x1 int) int) (a, e int, partial bool) {
	var cls [max(attnLK, attnLQ) / attnG]int
	n, first, last := 0, -1, -1
	for x0 := c0; x0 < c1; x0 += attnG {
		cls[n] = class(x0, min(x0+attnG, c1))
		if cls[n] != tileMasked {
			if first < 0 {
				first = n
			}
			last = n
		}
		n++
	}
	if first < 0 {
		return c0, c0, false
	}
	for i := first; i <= last; i++ {
		partial = partial || cls[i] != tileFull
	}
	return c0 + first*attnG, min(c0+(last+1)*attnG, c1), partial
}

// maskTile sets the invisible entries of the score tile st (query rows
// [t0,t1) × key rows [j0,j0+w), row stride ld) to -Inf.
func (s *AttnShape) maskTile(st []float32, ld, b, t0, t1, j0, w int) {
	ninf := float32(math.Inf(-1))
	// Segments need the per-element test unless the whole tile is one
	// document (the common case for packed sequences).
	segMixed := false
	if s.QSeg != nil {
		qmin, qmax := minMax(s.QSeg[b*s.Tq+t0 : b*s.Tq+t1])
		kmin, kmax := minMax(s.KSeg[b*s.Tk+j0 : b*s.Tk+j0+w])
		segMixed = qmin != qmax || kmin != kmax || qmin != kmin
	}
	for r := 0; r < t1-t0; r++ {
		row := st[r*ld : r*ld+w]
		if s.Causal {
			// Key j0+c is visible iff c <= QPos0+t−KPos0−j0.
			lim := s.QPos0 + t0 + r - s.KPos0 - j0 + 1
			for c := max(lim, 0); c < w; c++ {
				row[c] = ninf
			}
		}
		if segMixed {
			qs := s.QSeg[b*s.Tq+t0+r]
			ks := s.KSeg[b*s.Tk+j0 : b*s.Tk+j0+w]
			for c, id := range ks {
				if id != qs {
					row[c] = ninf
				}
			}
		}
	}
}

// scoreScale prepares a raw q·k tile for exp(z·scl − x): with the usual
// positive scale it returns it unchanged (the max of z·scale is then
// max(z)·scale exactly); a negative scale is applied in place first, since
// it reverses the order, and 1 is returned. Call it before masking.
func scoreScale(st []float32, ld, rows, w int, sc float32) float32 {
	if sc > 0 {
		return sc
	}
	for r := 0; r < rows; r++ {
		row := st[r*ld : r*ld+w]
		for c := range row {
			row[c] *= sc
		}
	}
	return 1
}

// attnScratch is one goroutine's working memory.
type attnScratch struct {
	s, p   []float32 // attnBQ×attnLK (or attnLQ×attnBK): scores / P, dP / dS
	rp, rd []float32 // attnLQ×attnLK region P and dS (per-pair backward)
	acc    []float32 // attnBQ×HeadDim output accumulator (forward)
	m, l   []float32 // attnBQ running max and sum (forward)
	dimen  int
}

var attnPool sync.Pool

const attnPanel = max(attnBQ*attnLK, attnLQ*attnBK)

func getAttnScratch(d int) *attnScratch {
	if x, ok := attnPool.Get().(*attnScratch); ok && x.dimen == d {
		return x
	}
	return &attnScratch{
		s:     make([]float32, attnPanel),
		p:     make([]float32, attnPanel),
		acc:   make([]float32, attnBQ*d),
		m:     make([]float32, attnBQ),
		l:     make([]float32, attnBQ),
		dimen: d,
	}
}

// region returns the per-pair backward's region buffers, allocating them on
// first use (the forward never needs them).
func (x *attnScratch) region() (rp, rd []float32) {
	if x.rp == nil {
		x.rp = make([]float32, attnLQ*attnLK)
		x.rd = make([]float32, attnLQ*attnLK)
	}
	return x.rp, x.rd
}

// forAttnBlocks calls f in parallel for every (batch, head) pair p < pairs
// and every block [lo, hi) of n rows cut every blk, each worker with its own
// scratch for head dimension dim.
func forAttnBlocks(pairs, n, blk, dim int, f func(p, lo, hi int, scr *attnScratch)) {
	nb := (n + blk - 1) / blk
	ParallelFor(pairs*nb, 1, func(lo, hi int) {
		scr := getAttnScratch(dim)
		for u := lo; u < hi; u++ {
			p, r0 := u/nb, (u%nb)*blk
			f(p, r0, min(r0+blk, n), scr)
		}
		attnPool.Put(scr)
	})
}
