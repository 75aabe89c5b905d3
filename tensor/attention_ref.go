package tensor

import "math"

// AttentionForwardRef is the naive reference for AttentionForward: for each
// (batch, head, query) it materialises the score row, in float64, one
// goroutine.
func AttentionForwardRef(o, lse, q, k, v []float32, s AttnShape) {
	D, H := s.HeadDim, s.Heads
	sc := float64(s.scale())
	scores := make([]float64, s.Tk)
	acc := make([]float64, D)
	for b := 0; b < s.Batch; b++ {
		for h := 0; h < H; h++ {
			for t := 0; t < s.Tq; t++ {
				qr := q[(b*s.Tq+t)*s.QStride+h*D:][:D]
				mx := math.Inf(-1)
				for j := 0; j < s.Tk; j++ {
					scores[j] = math.Inf(-1)
					if !s.visible(b, t, j) {
						continue
					}
					kr := k[(b*s.Tk+j)*s.KStride+h*D:][:D]
					var z float64
					for i := range qr {
						z += float64(qr[i]) * float64(kr[i])
					}
					scores[j] = z * sc
					mx = math.Max(mx, scores[j])
				}
				or := o[(b*s.Tq+t)*s.OStride+h*D:][:D]
				li := (b*H+h)*s.Tq + t
				if math.IsInf(mx, -1) {
					clear(or)
					lse[li] = float32(mx)
					continue
				}
				clear(acc)
				var sum float64
				for j := 0; j < s.Tk; j++ {
					if math.IsInf(scores[j], -1) {
						continue
					}
					p := math.Exp(scores[j] - mx)
					sum += p
					vr := v[(b*s.Tk+j)*s.VStride+h*D:][:D]
					for i := range acc {
						acc[i] += p * float64(vr[i])
					}
				}
				for i := range or {
					or[i] = float32(acc[i] / sum)
				}
				lse[li] = float32(mx + math.Log(sum))
			}
		}
	}
}

// AttentionBackwardRef is the naive reference for AttentionBackward: per
// (batch, head) it materialises P = exp(S − lse) and dS = P∘(dO·Vᵀ − d), in
// float64, one goroutine, accumulating into dq, dk, dv.
func AttentionBackwardRef(dq, dk, dv, do, q, k, v, lse, d []float32, s AttnShape) {
	D, H := s.HeadDim, s.Heads
	sc := float64(s.scale())
	dqa := make([]float64, D)
	for b := 0; b < s.Batch; b++ {
		for h := 0; h < H; h++ {
			dka := make([]float64, s.Tk*D)
			dva := make([]float64, s.Tk*D)
			for t := 0; t < s.Tq; t++ {
				li := (b*H+h)*s.Tq + t
				if math.IsInf(float64(lse[li]), -1) {
					continue
				}
				qr := q[(b*s.Tq+t)*s.QStride+h*D:][:D]
				dor := do[(b*s.Tq+t)*s.OStride+h*D:][:D]
				clear(dqa)
				for j := 0; j < s.Tk; j++ {
					if !s.visible(b, t, j) {
						continue
					}
					kr := k[(b*s.Tk+j)*s.KStride+h*D:][:D]
					vr := v[(b*s.Tk+j)*s.VStride+h*D:][:D]
					var z, dp float64
					for i := range qr {
						z += float64(qr[i]) * float64(kr[i])
						dp += float64(dor[i]) * float64(vr[i])
					}
					p := math.Exp(z*sc - float64(lse[li]))
					ds := p * (dp - float64(d[li]))
					for i := 0; i < D; i++ {
						dva[j*D+i] += p * float64(dor[i])
						dka[j*D+i] += ds * sc * float64(qr[i])
						dqa[i] += ds * sc * float64(kr[i])
					}
				}
				dqr := dq[(b*s.Tq+t)*s.QStride+h*D:][:D]
				for i := range dqr {
					dqr[i] += float32(dqa[i])
				}
			}
			for j := 0; j < s.Tk; j++ {
				dkr := dk[(b*s.Tk+j)*s.KStride+h*D:][:D]
				dvr := dv[(b*s.Tk+j)*s.VStride+h*D:][:D]
				for i := 0; i < D; i++ {
					dkr[i] += float32(dka[j*D+i])
					dvr[i] += float32(dva[j*D+i])
				}
			}
		}
	}
}
