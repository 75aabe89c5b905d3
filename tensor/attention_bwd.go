package tensor

import "math"

// AttentionBackward accumulates dq, dk, dv given do, the forward inputs, the
// forward's lse and d = AttentionRowDot(do, o). It does not need o, so
// (q, do, lse, d) can travel between ranks for sequence parallelism.
//
// It recomputes P = exp(scale·QKᵀ − lse) and dS = scale·P∘(dO·Vᵀ − d) over
// the unmasked (query block × key chunk) spans and adds dS·K to dq, Pᵀ·dO to
// dv and dSᵀ·Q to dk. Two schedules give bitwise identical results, because
// each P, dS element is computed by the same operations and each reduction
// runs over the same fixed chunks in the same order in both:
//   - per (batch, head) pair, each span computed once (when there are enough
//     pairs to keep every thread busy, or one thread);
//   - otherwise a dq pass over (batch, head, query block) and a dk, dv pass
//     over (batch, head, key block), each recomputing the spans it needs.
func AttentionBackward(dq, dk, dv, do, q, k, v, lse, d []float32, s AttnShape) {
	if s.Batch <= 0 || s.Tq <= 0 || s.Tk <= 0 || s.Heads <= 0 || s.HeadDim <= 0 {
		return
	}
	bh := s.Batch * s.Heads
	if th := Threads(); th == 1 || bh >= 2*th {
		ParallelFor(bh, 1, func(lo, hi int) {
			scr := getAttnScratch(s.HeadDim)
			for u := lo; u < hi; u++ {
				attnBackwardPair(dq, dk, dv, do, q, k, v, lse, d, &s, u/s.Heads, u%s.Heads, scr)
			}
			attnPool.Put(scr)
		})
		return
	}
	forAttnBlocks(bh, s.Tq, attnBQ, s.HeadDim, func(p, t0, t1 int, scr *attnScratch) {
		attnBackwardDQ(dq, do, q, k, v, lse, d, &s, p/s.Heads, p%s.Heads, t0, t1, scr)
	})
	forAttnBlocks(bh, s.Tk, attnBK, s.HeadDim, func(p, j0, j1 int, scr *attnScratch) {
		attnBackwardDKV(dk, dv, do, q, k, v, lse, d, &s, p/s.Heads, p%s.Heads, j0, j1, scr)
	})
}

// attnBackwardSpan computes P and dS for query rows [t0,t1) × key rows
// [a,e) of (b, h) into p and ds (row stride ld). Masked and underflowed
// entries get exactly +0 in both, so a span never computed (left zero by
// the per-pair schedule) equals one computed and masked.
func attnBackwardSpan(p, ds []float32, ld int, do, q, k, v, lse, d []float32, s *AttnShape, b, h, t0, t1, a, e int, partial bool) {
	D, rows, w := s.HeadDim, t1-t0, e-a
	sc := s.scale()
	GemmSerial(false, true, rows, w, D, q[(b*s.Tq+t0)*s.QStride+h*D:], s.QStride, k[(b*s.Tk+a)*s.KStride+h*D:], s.KStride, 0, p, ld)
	GemmSerial(false, true, rows, w, D, do[(b*s.Tq+t0)*s.OStride+h*D:], s.OStride, v[(b*s.Tk+a)*s.VStride+h*D:], s.VStride, 0, ds, ld)
	scl := scoreScale(p, ld, rows, w, sc)
	if partial {
		s.maskTile(p, ld, b, t0, t1, a, w)
	}
	li := (b*s.Heads+h)*s.Tq + t0
	for r := 0; r < rows; r++ {
		pr, dr := p[r*ld:r*ld+w], ds[r*ld:r*ld+w]
		lr, dd := lse[li+r], d[li+r]
		if math.IsInf(float64(lr), -1) { // row sees no key at all
			clear(pr)
			clear(dr)
			continue
		}
		expScaledRow(pr, scl, lr)
		for c, pe := range pr {
			if pe == 0 {
				dr[c] = 0
			} else {
				dr[c] = sc * pe * (dr[c] - dd)
			}
		}
	}
}

// attnBackwardDQ accumulates dq for query rows [t0,t1) of (b, h), key chunk
// by key chunk.
func attnBackwardDQ(dq, do, q, k, v, lse, d []float32, s *AttnShape, b, h, t0, t1 int, scr *attnScratch) {
	D, bq := s.HeadDim, t1-t0
	qoff := (b*s.Tq+t0)*s.QStride + h*D
	s.keySpans(b, t0, t1, func(a, e int, partial bool) {
		w := e - a
		attnBackwardSpan(scr.s, scr.p, w, do, q, k, v, lse, d, s, b, h, t0, t1, a, e, partial)
		GemmSerial(false, false, bq, D, w, scr.p, w, k[(b*s.Tk+a)*s.KStride+h*D:], s.KStride, 1, dq[qoff:], s.QStride)
	})
}

// attnBackwardDKV accumulates dk, dv for key rows [j0,j1) of (b, h), query
// chunk by query chunk.
func attnBackwardDKV(dk, dv, do, q, k, v, lse, d []float32, s *AttnShape, b, h, j0, j1 int, scr *attnScratch) {
	D, bk := s.HeadDim, j1-j0
	koff := (b*s.Tk+j0)*s.KStride + h*D
	voff := (b*s.Tk+j0)*s.VStride + h*D
	s.querySpans(b, j0, j1, func(a, e int, partial bool) {
		attnBackwardSpan(scr.s, scr.p, bk, do, q, k, v, lse, d, s, b, h, a, e, j0, j1, partial)
		GemmSerial(true, false, bk, D, e-a, scr.s, bk, do[(b*s.Tq+a)*s.OStride+h*D:], s.OStride, 1, dv[voff:], s.VStride)
		GemmSerial(true, false, bk, D, e-a, scr.p, bk, q[(b*s.Tq+a)*s.QStride+h*D:], s.QStride, 1, dk[koff:], s.KStride)
	})
}

// attnBackwardPair does the whole backward of (b, h) one (query chunk × key
// chunk) region at a time, computing each span of P and dS once into the
// region buffers: query blocks first (adding to dq), then key blocks read
// their columns (adding to dk, dv). Regions go query chunk outer, key chunk
// inner, so every dq block still sums key chunks in increasing order and
// every dk, dv block query chunks in increasing order, as in the two-pass
// schedule.
func attnBackwardPair(dq, dk, dv, do, q, k, v, lse, d []float32, s *AttnShape, b, h int, scr *attnScratch) {
	D := s.HeadDim
	rp, rd := scr.region()
	for qc0 := 0; qc0 < s.Tq; qc0 += attnLQ {
		qc1 := min(qc0+attnLQ, s.Tq)
		for kc0 := 0; kc0 < s.Tk; kc0 += attnLK {
			kc1 := min(kc0+attnLK, s.Tk)
			kw := kc1 - kc0
			for t0 := qc0; t0 < qc1; t0 += attnBQ {
				t1 := min(t0+attnBQ, qc1)
				a, e, partial := s.trimKeys(b, t0, t1, kc0, kc1)
				// Zero the parts of these rows the span does not cover.
				for r := t0 - qc0; r < t1-qc0; r++ {
					clear(rp[r*kw : r*kw+a-kc0])
					clear(rd[r*kw : r*kw+a-kc0])
					clear(rp[r*kw+e-kc0 : (r+1)*kw])
					clear(rd[r*kw+e-kc0 : (r+1)*kw])
				}
				if a == e {
					continue
				}
				off := (t0-qc0)*kw + a - kc0
				attnBackwardSpan(rp[off:], rd[off:], kw, do, q, k, v, lse, d, s, b, h, t0, t1, a, e, partial)
				GemmSerial(false, false, t1-t0, D, e-a, rd[off:], kw, k[(b*s.Tk+a)*s.KStride+h*D:], s.KStride, 1, dq[(b*s.Tq+t0)*s.QStride+h*D:], s.QStride)
			}
			for j0 := kc0; j0 < kc1; j0 += attnBK {
				j1 := min(j0+attnBK, kc1)
				a, e, _ := s.trimQueries(b, j0, j1, qc0, qc1)
				if a == e {
					continue
				}
				off := (a-qc0)*kw + j0 - kc0
				GemmSerial(true, false, j1-j0, D, e-a, rp[off:], kw, do[(b*s.Tq+a)*s.OStride+h*D:], s.OStride, 1, dv[(b*s.Tk+j0)*s.VStride+h*D:], s.VStride)
				GemmSerial(true, false, j1-j0, D, e-a, rd[off:], kw, q[(b*s.Tq+a)*s.QStride+h*D:], s.QStride, 1, dk[(b*s.Tk+j0)*s.KStride+h*D:], s.KStride)
			}
		}
	}
}
