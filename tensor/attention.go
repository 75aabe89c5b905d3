package tensor

import (
	"fmt"
	"math"
)

// AttnShape describes one attention call: queries [Batch][Tq] rows against
// keys/values [Batch][Tk] rows. Row t of sequence b of q starts at
// (b·Tq + t)·QStride (k, v, o likewise with Tk/KStride, Tk/VStride,
// Tq/OStride); head h of a row occupies [h·HeadDim, (h+1)·HeadDim), so packed
// QKV buffers work (QStride = 3C). Gradients dq, dk, dv, do use the layouts of
// q, k, v, o. lse, d are [Batch][Heads][Tq].
type AttnShape struct {
	Batch, Tq, Tk, Heads, HeadDim      int
	QStride, KStride, VStride, OStride int

	// Causal makes key s of a sequence visible to query t only if
	// KPos0+s <= QPos0+t.
	Causal bool
	// QPos0, KPos0 are the absolute positions of row 0 of the query and key
	// blocks (used by Causal), so a block of a longer sequence can be
	// processed alone (sequence parallelism).
	QPos0, KPos0 int
	// QSeg [Batch·Tq] and KSeg [Batch·Tk] are optional document ids: a key
	// is visible only to queries with the same id (sequence packing). nil
	// means no constraint; both or neither must be set.
	QSeg, KSeg []int32
	// Scale multiplies q·k; 0 means 1/sqrt(HeadDim).
	Scale float32
}

// Validate checks s against the lengths of the q, k, v and o buffers (dq,
// dk, dv, do share those layouts): non-negative sizes, positive heads and
// head size, strides that hold every head, buffers long enough, segment id
// slices both set or both nil and sized Batch·Tq / Batch·Tk, a finite scale.
// The kernels themselves only check slice bounds, so callers with shapes
// from outside validate once here.
func (s AttnShape) Validate(nq, nk, nv, no int) error {
	if s.Batch < 0 || s.Tq < 0 || s.Tk < 0 {
		return fmt.Errorf("tensor: attention shape: negative size (Batch %d, Tq %d, Tk %d)", s.Batch, s.Tq, s.Tk)
	}
	if s.Heads <= 0 || s.HeadDim <= 0 {
		return fmt.Errorf("tensor: attention shape: Heads %d and HeadDim %d must be positive", s.Heads, s.HeadDim)
	}
	width := s.Heads * s.HeadDim
	for _, b := range []struct {
		name         string
		stride, rows int
		have         int
	}{
		{"q", s.QStride, s.Batch * s.Tq, nq},
		{"k", s.KStride, s.Batch * s.Tk, nk},
		{"v", s.VStride, s.Batch * s.Tk, nv},
		{"o", s.OStride, s.Batch * s.Tq, no},
	} {
		if b.stride < width {
			return fmt.Errorf("tensor: attention shape: %s stride %d < Heads·HeadDim = %d", b.name, b.stride, width)
		}
		if b.rows > 0 {
			if need := (b.rows-1)*b.stride + width; b.have < need {
				return fmt.Errorf("tensor: attention shape: %s has %d floats, %d rows with stride %d need %d", b.name, b.have, b.rows, b.stride, need)
			}
		}
	}
	if (s.QSeg == nil) != (s.KSeg == nil) {
		return fmt.Errorf("tensor: attention shape: QSeg and KSeg must both be set or both nil")
	}
	if s.QSeg != nil && (len(s.QSeg) != s.Batch*s.Tq || len(s.KSeg) != s.Batch*s.Tk) {
		return fmt.Errorf("tensor: attention shape: QSeg has %d ids, KSeg %d; want Batch·Tq = %d and Batch·Tk = %d",
			len(s.QSeg), len(s.KSeg), s.Batch*s.Tq, s.Batch*s.Tk)
	}
	if math.IsNaN(float64(s.Scale)) || math.IsInf(float64(s.Scale), 0) {
		return fmt.Errorf("tensor: attention shape: Scale %v is not finite", s.Scale)
	}
	return nil
}

// scale returns the effective score scale.
func (s *AttnShape) scale() float32 {
	if s.Scale != 0 {
		return s.Scale
	}
	return float32(1 / math.Sqrt(float64(s.HeadDim)))
}

// visible reports whether key row j of sequence b is visible to query row t.
func (s *AttnShape) visible(b, t, j int) bool {
	if s.Causal && s.KPos0+j > s.QPos0+t {
		return false
	}
	if s.QSeg != nil && s.QSeg[b*s.Tq+t] != s.KSeg[b*s.Tk+j] {
		return false
	}
	return true
}

// AttentionRowDot sets d[b][h][t] = Σ_i dO[b,t,h,i]·O[b,t,h,i], the
// correction term of the attention backward. do and o use OStride.
func AttentionRowDot(d, do, o []float32, s AttnShape) {
	D := s.HeadDim
	s.eachHeadRow(func(i, off int) {
		d[i] = dot(do[off:off+D], o[off:off+D])
	})
}

// AttentionMerge merges a partial result (o2, lse2) computed over keys
// disjoint from those of (o, lse) into (o, lse), in place:
// lse = log(e^lse + e^lse2), o = e^(lse−lse')·o + e^(lse2−lse')·o2, in the
// stable sigmoid/softplus form. Rows where one side is -Inf (no visible key)
// take the other side unchanged; both -Inf gives o = 0, lse = -Inf. o and o2
// both use OStride.
func AttentionMerge(o, lse, o2, lse2 []float32, s AttnShape) {
	D := s.HeadDim
	s.eachHeadRow(func(i, off int) {
		dst, src := o[off:off+D], o2[off:off+D]
		l1, l2 := lse[i], lse2[i]
		switch {
		case math.IsInf(float64(l2), -1):
			if math.IsInf(float64(l1), -1) {
				clear(dst)
			}
		case math.IsInf(float64(l1), -1):
			copy(dst, src)
			lse[i] = l2
		default:
			// w1 = σ(l1−l2), w2 = σ(l2−l1) = 1−w1;
			// lse = max + log1p(e^−|l1−l2|).
			x := float64(l1 - l2)
			e := math.Exp(-math.Abs(x))
			var w1 float64
			if x >= 0 {
				w1 = 1 / (1 + e)
			} else {
				w1 = e / (1 + e)
			}
			a, c := float32(w1), float32(1-w1)
			for j := range dst {
				dst[j] = a*dst[j] + c*src[j]
			}
			lse[i] = float32(math.Max(float64(l1), float64(l2)) + math.Log1p(e))
		}
	})
}

// eachHeadRow calls f(i, off) for every query row t of every (batch b,
// head h), in parallel over the (b, h) pairs: i = (b·Heads + h)·Tq + t
// indexes lse-shaped buffers, off = (b·Tq + t)·OStride + h·HeadDim is the
// row's first element in an OStride buffer.
func (s *AttnShape) eachHeadRow(f func(i, off int)) {
	D, H, Tq := s.HeadDim, s.Heads, s.Tq
	ParallelFor(s.Batch*H, max(1, 4096/max(1, Tq*D)), func(lo, hi int) {
		for bh := lo; bh < hi; bh++ {
			b, h := bh/H, bh%H
			for t := 0; t < Tq; t++ {
				f(bh*Tq+t, (b*Tq+t)*s.OStride+h*D)
			}
		}
	})
}
