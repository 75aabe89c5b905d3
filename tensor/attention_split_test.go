package tensor

import (
	"math"
	"testing"
)

// keyRows copies key rows [j0,j1) of every sequence of a [B][T] buffer with
// row stride st into a compact [B][j1−j0] buffer with the same stride.
func keyRows(x []float32, B, T, st, j0, j1 int) []float32 {
	out := make([]float32, B*(j1-j0)*st)
	for b := 0; b < B; b++ {
		copy(out[b*(j1-j0)*st:], x[(b*T+j0)*st:(b*T+j1)*st])
	}
	return out
}

// putKeyRows adds the compact rows back into rows [j0,j1) of x.
func putKeyRows(x, part []float32, B, T, st, j0, j1 int) {
	for b := 0; b < B; b++ {
		AddInPlace(x[(b*T+j0)*st:(b*T+j1)*st], part[b*(j1-j0)*st:])
	}
}

func segRows(ids []int32, B, T, j0, j1 int) []int32 {
	if ids == nil {
		return nil
	}
	out := make([]int32, 0, B*(j1-j0))
	for b := 0; b < B; b++ {
		out = append(out, ids[b*T+j0:b*T+j1]...)
	}
	return out
}

// keyBlock returns the shape and k, v buffers of key rows [j0,j1) alone.
func keyBlock(c *attnCase, j0, j1 int) (AttnShape, []float32, []float32) {
	s := c.s
	sub := s
	sub.Tk = j1 - j0
	sub.KPos0 = s.KPos0 + j0
	sub.KSeg = segRows(s.KSeg, s.Batch, s.Tk, j0, j1)
	return sub, keyRows(c.k, s.Batch, s.Tk, s.KStride, j0, j1), keyRows(c.v, s.Batch, s.Tk, s.VStride, j0, j1)
}

func TestAttentionSplitKeysMerge(t *testing.T) {
	r := newRNG(70)
	specs := []attnSpec{
		{B: 2, Tq: 67, Tk: 67, H: 2, D: 8, causal: true},
		{B: 1, Tq: 130, Tk: 130, H: 3, D: 16, causal: true, seg: 1},
		{B: 2, Tq: 13, Tk: 29, H: 1, D: 5, seg: 2},
		{B: 1, Tq: 70, Tk: 140, H: 2, D: 4, causal: true, q0: 70, k0: 0},
	}
	for _, p := range specs {
		for _, split := range []int{1, p.Tk / 2, 64, p.Tk - 1} {
			if split <= 0 || split >= p.Tk {
				continue
			}
			c := newAttnCase(r, p)
			s := c.s
			t.Run(c.name+"_split"+sizeName(split), func(t *testing.T) {
				nl := s.Batch * s.Heads * s.Tq
				o, lse := outBuf(s, 0), make([]float32, nl)
				AttentionForward(o, lse, c.q, c.k, c.v, s)

				s1, k1, v1 := keyBlock(c, 0, split)
				s2, k2, v2 := keyBlock(c, split, s.Tk)
				o1, l1 := outBuf(s, 0), make([]float32, nl)
				o2, l2 := outBuf(s, 0), make([]float32, nl)
				AttentionForward(o1, l1, c.q, k1, v1, s1)
				AttentionForward(o2, l2, c.q, k2, v2, s2)
				AttentionMerge(o1, l1, o2, l2, s)
				checkClose(t, "merged o", o1, o, 1e-6, 1e-5)
				checkClose(t, "merged lse", l1, lse, 1e-6, 1e-6)

				// Backward over the two key blocks with the full lse and d:
				// dq sums, dk and dv land in their own rows.
				d := make([]float32, nl)
				AttentionRowDot(d, c.do, o, s)
				dq, dk, dv := make([]float32, len(c.q)), make([]float32, len(c.k)), make([]float32, len(c.v))
				AttentionBackward(dq, dk, dv, c.do, c.q, c.k, c.v, lse, d, s)
				sq := make([]float32, len(c.q))
				sk, sv := make([]float32, len(c.k)), make([]float32, len(c.v))
				for _, part := range []struct {
					s      AttnShape
					k, v   []float32
					j0, j1 int
				}{{s1, k1, v1, 0, split}, {s2, k2, v2, split, s.Tk}} {
					pk, pv := make([]float32, len(part.k)), make([]float32, len(part.v))
					AttentionBackward(sq, pk, pv, c.do, c.q, part.k, part.v, lse, d, part.s)
					putKeyRows(sk, pk, s.Batch, s.Tk, s.KStride, part.j0, part.j1)
					putKeyRows(sv, pv, s.Batch, s.Tk, s.VStride, part.j0, part.j1)
				}
				checkClose(t, "split dq", sq, dq, 1e-5, 1e-4)
				checkClose(t, "split dk", sk, dk, 1e-6, 1e-6)
				checkClose(t, "split dv", sv, dv, 1e-6, 1e-6)
			})
		}
	}
}

func TestAttentionMergeInfinities(t *testing.T) {
	s := AttnShape{Batch: 1, Tq: 4, Tk: 1, Heads: 1, HeadDim: 2, OStride: 2}
	ninf := float32(math.Inf(-1))
	o := []float32{1, 2, 3, 4, 5, 6, 7, 8}
	lse := []float32{0.5, ninf, ninf, 1}
	o2 := []float32{10, 20, 30, 40, 50, 60, 70, 80}
	lse2 := []float32{ninf, 2, ninf, 1}
	AttentionMerge(o, lse, o2, lse2, s)
	checkBitwise(t, "o", o[:6], []float32{1, 2, 30, 40, 0, 0})
	checkBitwise(t, "lse", lse[:3], []float32{0.5, 2, ninf})
	// Equal lse: halfway, lse + log 2.
	checkClose(t, "equal-weight o", o[6:], []float64{38.5, 44}, 1e-6, 1e-6)
	checkClose(t, "equal-weight lse", lse[3:], []float64{1 + math.Ln2}, 1e-6, 1e-6)
	// Very different magnitudes must not overflow.
	o, lse = []float32{1, 1}, []float32{80}
	o2, lse2 = []float32{3, 3}, []float32{-80}
	AttentionMerge(o, lse, o2, lse2, AttnShape{Batch: 1, Tq: 1, Heads: 1, HeadDim: 2, OStride: 2})
	checkClose(t, "far o", o, []float64{1, 1}, 1e-6, 1e-6)
	checkClose(t, "far lse", lse, []float64{80}, 1e-6, 1e-6)
}

func TestAttentionThreadsBitwise(t *testing.T) { forEachRowPath(t, testAttentionThreadsBitwise) }

func testAttentionThreadsBitwise(t *testing.T) {
	r := newRNG(71)
	// Batch·Heads = 2 so Threads 1 takes the per-(batch, head) backward and
	// Threads 2, 3 the split dq / dk,dv passes: all must agree bitwise.
	for _, p := range []attnSpec{
		{B: 1, Tq: 200, Tk: 200, H: 2, D: 16, causal: true, seg: 1},
		{B: 2, Tq: 67, Tk: 131, H: 1, D: 8, causal: true, q0: 64, k0: 0, packed: false},
		{B: 1, Tq: 130, Tk: 130, H: 2, D: 8, packed: true},
		{B: 1, Tq: 300, Tk: 300, H: 2, D: 4, causal: true, seg: 2},
		{B: 2, Tq: 530, Tk: 260, H: 1, D: 3, seg: 1},
		{B: 1, Tq: 600, Tk: 600, H: 1, D: 8, causal: true},
		{B: 2, Tq: 300, Tk: 300, H: 2, D: 4, seg: 3},
		{B: 2, Tq: 300, Tk: 300, H: 1, D: 4, causal: true, seg: 3},
	} {
		c := newAttnCase(r, p)
		s := c.s
		nl := s.Batch * s.Heads * s.Tq
		// Non-zero initial gradients, so the order in which chunks are
		// added matters even with only two of them.
		iq, ik, iv := newGrads(r, c)
		names := []string{c.name + " o", c.name + " lse", c.name + " dq", c.name + " dk", c.name + " dv"}
		checkThreadsBitwise(t, names, func() [][]float32 {
			o, lse := outBuf(s, 0), make([]float32, nl)
			AttentionForward(o, lse, c.q, c.k, c.v, s)
			d := make([]float32, nl)
			AttentionRowDot(d, c.do, o, s)
			dq, dk, dv := append([]float32(nil), iq...), append([]float32(nil), ik...), append([]float32(nil), iv...)
			AttentionBackward(dq, dk, dv, c.do, c.q, c.k, c.v, lse, d, s)
			return [][]float32{o, lse, dq, dk, dv}
		})
	}
}
