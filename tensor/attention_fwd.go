package tensor

import "math"

// AttentionForward computes, per (batch, head), o = softmax(scale·q·kᵀ
// restricted to visible keys)·v and lse = log Σ_visible exp(scale·q·k). A
// query row with no visible key gets o = 0 and lse = -Inf. Each 64-row query
// block walks the keys in 256-row chunks with an online softmax (two Gemms
// per chunk); each chunk is trimmed to the span between its first and last
// 64-row key blocks that are not fully masked (by causality or segments), so
// masked chunks and chunk ends cost nothing, and masked blocks inside a span
// (only possible with non-monotone segment ids) are computed and masked.
// Work is split over (batch, head, query block) and each output row is owned
// by one goroutine, so results are bitwise identical for any thread count.
func AttentionForward(o, lse, q, k, v []float32, s AttnShape) {
	if s.Batch <= 0 || s.Tq <= 0 || s.Heads <= 0 || s.HeadDim <= 0 {
		return
	}
	forAttnBlocks(s.Batch*s.Heads, s.Tq, attnBQ, s.HeadDim, func(bh, t0, t1 int, scr *attnScratch) {
		attnForwardRows(o, lse, q, k, v, &s, bh/s.Heads, bh%s.Heads, t0, t1, scr)
	})
}

// attnForwardRows computes o and lse for query rows [t0,t1) of (b, h).
func attnForwardRows(o, lse, q, k, v []float32, s *AttnShape, b, h, t0, t1 int, scr *attnScratch) {
	D, bq := s.HeadDim, t1-t0
	sc := s.scale()
	ninf := float32(math.Inf(-1))
	m, l, acc := scr.m[:bq], scr.l[:bq], scr.acc[:bq*D]
	for r := range m {
		m[r] = ninf
	}
	clear(l)
	clear(acc)
	qoff := (b*s.Tq+t0)*s.QStride + h*D
	s.keySpans(b, t0, t1, func(a, e int, partial bool) {
		w := e - a
		st := scr.s[:bq*w]
		GemmSerial(false, true, bq, w, D, q[qoff:], s.QStride, k[(b*s.Tk+a)*s.KStride+h*D:], s.KStride, 0, st, w)
		scl := scoreScale(st, w, bq, w, sc)
		if partial {
			s.maskTile(st, w, b, t0, t1, a, w)
		}
		for r := 0; r < bq; r++ {
			row := st[r*w : (r+1)*w]
			mx := max(m[r], rowMax(row)*scl)
			if mx == ninf { // nothing visible in this row so far
				clear(row)
				continue
			}
			sum := expScaledRow(row, scl, mx)
			if alpha := expf(m[r] - mx); alpha != 1 {
				ar := acc[r*D : (r+1)*D]
				for i := range ar {
					ar[i] *= alpha
				}
				l[r] *= alpha
			}
			l[r] += sum
			m[r] = mx
		}
		GemmSerial(false, false, bq, D, w, st, w, v[(b*s.Tk+a)*s.VStride+h*D:], s.VStride, 1, acc, D)
	})
	for r := 0; r < bq; r++ {
		or := o[(b*s.Tq+t0+r)*s.OStride+h*D:][:D]
		li := (b*s.Heads+h)*s.Tq + t0 + r
		if l[r] == 0 {
			clear(or)
			lse[li] = ninf
			continue
		}
		inv := 1 / l[r]
		ar := acc[r*D : (r+1)*D]
		for i := range or {
			or[i] = ar[i] * inv
		}
		lse[li] = m[r] + float32(math.Log(float64(l[r])))
	}
}
