package tensor

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// attnCase is one randomised attention problem with its buffers.
type attnCase struct {
	s       AttnShape
	q, k, v []float32 // views into one buffer when packed
	do      []float32 // OStride layout
	name    string
}

type attnSpec struct {
	B, Tq, Tk, H, D int
	packed, causal  bool
	q0, k0          int
	seg             int // 0 none, 1 monotone documents, 2 arbitrary ids, 3 stripes, 4 long documents
	scale           float32
}

func (p attnSpec) String() string {
	return fmt.Sprintf("B%d_Tq%d_Tk%d_H%d_D%d_packed%v_causal%v_q0%d_k0%d_seg%d", p.B, p.Tq, p.Tk, p.H, p.D, p.packed, p.causal, p.q0, p.k0, p.seg)
}

// randSegs returns n = B·T document ids: monotone (packed documents) or
// arbitrary small ids.
func randSegs(r *rand.Rand, B, T, kind int) []int32 {
	ids := make([]int32, B*T)
	for b := 0; b < B; b++ {
		id := int32(0)
		for t := 0; t < T; t++ {
			if kind == 1 && r.IntN(9) == 0 {
				id++
			}
			if kind == 2 {
				id = int32(r.IntN(3))
			}
			if kind == 3 { // 64-row stripes alternating between two ids
				id = int32(t / 64 % 2)
			}
			if kind == 4 && t > 0 && r.IntN(100) == 0 { // long documents
				id++
			}
			ids[b*T+t] = id
		}
	}
	return ids
}

// newAttnCase builds the buffers for p. Query and key document ids are
// drawn so that positions shared by both blocks agree when Tq == Tk and
// q0 == k0 (self-attention); otherwise independently.
func newAttnCase(r *rand.Rand, p attnSpec) *attnCase {
	C := p.H * p.D
	s := AttnShape{Batch: p.B, Tq: p.Tq, Tk: p.Tk, Heads: p.H, HeadDim: p.D,
		Causal: p.causal, QPos0: p.q0, KPos0: p.k0, Scale: p.scale}
	c := &attnCase{name: p.String()}
	if p.packed {
		// One QKV buffer with 3C+1 floats per row (an odd stride); queries
		// and keys then share Tq == Tk rows.
		st := 3*C + 1
		nrows := p.B * max(p.Tq, p.Tk)
		buf := randVec(r, nrows*st, 1.5)
		s.QStride, s.KStride, s.VStride = st, st, st
		c.q, c.k, c.v = buf, buf[C:], buf[2*C:]
	} else {
		s.QStride, s.KStride, s.VStride = C, C+2, C
		c.q = randVec(r, p.B*p.Tq*s.QStride, 1.5)
		c.k = randVec(r, p.B*p.Tk*s.KStride, 1.5)
		c.v = randVec(r, p.B*p.Tk*s.VStride, 1.5)
	}
	s.OStride = C + 3
	c.do = randVec(r, p.B*p.Tq*s.OStride, 1)
	if p.seg != 0 {
		s.QSeg = randSegs(r, p.B, p.Tq, p.seg)
		if p.Tq == p.Tk && p.q0 == p.k0 {
			s.KSeg = s.QSeg
		} else {
			s.KSeg = randSegs(r, p.B, p.Tk, p.seg)
		}
	}
	c.s = s
	return c
}

// attnSpecs is the shape table for the property tests.
func attnSpecs() []attnSpec {
	var out []attnSpec
	for _, t := range []int{1, 7, 64, 67, 130} {
		out = append(out,
			attnSpec{B: 1, Tq: t, Tk: t, H: 1, D: 8, causal: true},
			attnSpec{B: 2, Tq: t, Tk: t, H: 3, D: 5, packed: true, causal: true, seg: 1},
			attnSpec{B: 2, Tq: t, Tk: t + 3, H: 2, D: 16},
		)
	}
	out = append(out,
		attnSpec{B: 1, Tq: 13, Tk: 1, H: 2, D: 3},
		attnSpec{B: 3, Tq: 67, Tk: 131, H: 2, D: 4, causal: true, q0: 100, k0: 0},        // queries after keys
		attnSpec{B: 1, Tq: 70, Tk: 70, H: 1, D: 7, causal: true, q0: 0, k0: 30},          // keys shifted: leading rows see nothing
		attnSpec{B: 2, Tq: 67, Tk: 67, H: 2, D: 8, causal: true, q0: 64, k0: 64, seg: 2}, // arbitrary ids
		attnSpec{B: 1, Tq: 130, Tk: 130, H: 2, D: 64, causal: true, seg: 1, scale: 0.3},
		attnSpec{B: 1, Tq: 5, Tk: 9, H: 1, D: 1, seg: 2},
		// Several 256-row chunks on both sides.
		attnSpec{B: 1, Tq: 300, Tk: 300, H: 2, D: 4, causal: true, seg: 1},
		attnSpec{B: 2, Tq: 260, Tk: 530, H: 1, D: 3, seg: 2},
		attnSpec{B: 1, Tq: 520, Tk: 700, H: 1, D: 5, causal: true, q0: 180, k0: 0},
		attnSpec{B: 2, Tq: 300, Tk: 300, H: 2, D: 4, seg: 3}, // masked blocks inside spans
	)
	return out
}

func outBuf(s AttnShape, fill float32) []float32 {
	o := make([]float32, s.Batch*s.Tq*s.OStride)
	for i := range o {
		o[i] = fill
	}
	return o
}

// checkPadding fails unless columns of o past Heads·HeadDim kept fill.
func checkPadding(t *testing.T, o []float32, s AttnShape, fill float32) {
	t.Helper()
	for row := 0; row < s.Batch*s.Tq; row++ {
		for c := s.Heads * s.HeadDim; c < s.OStride; c++ {
			if o[row*s.OStride+c] != fill {
				t.Fatalf("o row %d column %d outside the heads was written", row, c)
			}
		}
	}
}

func TestAttentionForwardMatchesRef(t *testing.T) { forEachRowPath(t, testAttentionForwardMatchesRef) }

func testAttentionForwardMatchesRef(t *testing.T) {
	r := newRNG(60)
	for _, p := range attnSpecs() {
		c := newAttnCase(r, p)
		t.Run(c.name, func(t *testing.T) {
			s := c.s
			nl := s.Batch * s.Heads * s.Tq
			o, lse := outBuf(s, 7), make([]float32, nl)
			oRef, lseRef := outBuf(s, 7), make([]float32, nl)
			AttentionForward(o, lse, c.q, c.k, c.v, s)
			AttentionForwardRef(oRef, lseRef, c.q, c.k, c.v, s)
			checkClose(t, "o", o, oRef, 2e-6, 2e-5)
			checkClose(t, "lse", lse, lseRef, 2e-6, 2e-6)
			checkPadding(t, o, s, 7)
		})
	}
}

// attnBackwardInputs runs the reference forward and returns o, lse, d.
func attnBackwardInputs(c *attnCase) (o, lse, d []float32) {
	s := c.s
	o, lse = outBuf(s, 0), make([]float32, s.Batch*s.Heads*s.Tq)
	AttentionForwardRef(o, lse, c.q, c.k, c.v, s)
	d = make([]float32, len(lse))
	AttentionRowDot(d, c.do, o, s)
	return o, lse, d
}

func TestAttentionRowDot(t *testing.T) {
	r := newRNG(61)
	c := newAttnCase(r, attnSpec{B: 2, Tq: 7, Tk: 7, H: 3, D: 5, packed: true})
	s := c.s
	o := randVec(r, s.Batch*s.Tq*s.OStride, 1)
	d := make([]float32, s.Batch*s.Heads*s.Tq)
	AttentionRowDot(d, c.do, o, s)
	for b := 0; b < s.Batch; b++ {
		for h := 0; h < s.Heads; h++ {
			for t0 := 0; t0 < s.Tq; t0++ {
				var want float64
				for i := 0; i < s.HeadDim; i++ {
					off := (b*s.Tq+t0)*s.OStride + h*s.HeadDim + i
					want += float64(c.do[off]) * float64(o[off])
				}
				checkClose(t, "d", d[(b*s.Heads+h)*s.Tq+t0:][:1], []float64{want}, 1e-6, 1e-5)
			}
		}
	}
}

// newGrads returns random non-zero initial gradients (the kernels
// accumulate) shaped like q, k, v.
func newGrads(r *rand.Rand, c *attnCase) (dq, dk, dv []float32) {
	return randVec(r, len(c.q), 1), randVec(r, len(c.k), 1), randVec(r, len(c.v), 1)
}

func TestAttentionBackwardMatchesRef(t *testing.T) {
	forEachRowPath(t, testAttentionBackwardMatchesRef)
}

func testAttentionBackwardMatchesRef(t *testing.T) {
	r := newRNG(62)
	for _, p := range attnSpecs() {
		c := newAttnCase(r, p)
		t.Run(c.name, func(t *testing.T) {
			_, lse, d := attnBackwardInputs(c)
			dq, dk, dv := newGrads(r, c)
			if p.packed {
				// One packed gradient buffer, like the packed QKV input.
				C := p.H * p.D
				dq = randVec(r, len(c.q), 1)
				dk, dv = dq[C:], dq[2*C:]
			}
			rq, rk, rv := append([]float32(nil), dq...), append([]float32(nil), dk...), append([]float32(nil), dv...)
			if p.packed {
				C := p.H * p.D
				rk, rv = rq[C:], rq[2*C:]
			}
			for _, th := range []int{1, 3} { // both backward schedules
				withThreads(t, []int{th}, func(int) {
					gq, gk, gv := append([]float32(nil), dq...), append([]float32(nil), dk...), append([]float32(nil), dv...)
					if p.packed {
						C := p.H * p.D
						gk, gv = gq[C:], gq[2*C:]
					}
					AttentionBackward(gq, gk, gv, c.do, c.q, c.k, c.v, lse, d, c.s)
					if th == 1 {
						AttentionBackwardRef(rq, rk, rv, c.do, c.q, c.k, c.v, lse, d, c.s)
					}
					checkClose(t, fmt.Sprint("dq threads ", th), gq, rq, 2e-5, 2e-4)
					checkClose(t, fmt.Sprint("dk threads ", th), gk, rk, 2e-5, 2e-4)
					checkClose(t, fmt.Sprint("dv threads ", th), gv, rv, 2e-5, 2e-4)
				})
			}
		})
	}
}

// attn64 is the float64 definition of attention output used for finite
// differences (q, k, v, o in the case's layouts).
func attn64(q, k, v []float64, s AttnShape) []float64 {
	D := s.HeadDim
	sc := float64(s.scale())
	o := make([]float64, s.Batch*s.Tq*s.OStride)
	for b := 0; b < s.Batch; b++ {
		for h := 0; h < s.Heads; h++ {
			for t := 0; t < s.Tq; t++ {
				var w []float64
				var js []int
				mx := math.Inf(-1)
				for j := 0; j < s.Tk; j++ {
					if !s.visible(b, t, j) {
						continue
					}
					z := 0.0
					for i := 0; i < D; i++ {
						z += q[(b*s.Tq+t)*s.QStride+h*D+i] * k[(b*s.Tk+j)*s.KStride+h*D+i]
					}
					w = append(w, z*sc)
					js = append(js, j)
					mx = math.Max(mx, z*sc)
				}
				sum := 0.0
				for i := range w {
					w[i] = math.Exp(w[i] - mx)
					sum += w[i]
				}
				for n, j := range js {
					for i := 0; i < D; i++ {
						o[(b*s.Tq+t)*s.OStride+h*D+i] += w[n] / sum * v[(b*s.Tk+j)*s.VStride+h*D+i]
					}
				}
			}
		}
	}
	return o
}

func TestAttentionGradient(t *testing.T) {
	r := newRNG(63)
	for _, p := range []attnSpec{
		{B: 1, Tq: 1, Tk: 1, H: 1, D: 1},
		{B: 2, Tq: 5, Tk: 5, H: 2, D: 3, causal: true},
		{B: 1, Tq: 6, Tk: 7, H: 1, D: 4, causal: true, q0: 3, k0: 0, seg: 1},
		{B: 1, Tq: 4, Tk: 9, H: 2, D: 2, seg: 2, scale: 0.7},
	} {
		c := newAttnCase(r, p)
		t.Run(c.name, func(t *testing.T) {
			s := c.s
			loss := func(q, k, v []float64) float64 {
				o := attn64(q, k, v, s)
				l := 0.0
				for i := range o {
					l += o[i] * float64(c.do[i])
				}
				return l
			}
			q64, k64, v64 := to64(c.q), to64(c.k), to64(c.v)
			wq := numGrad(func(x []float64) float64 { return loss(x, k64, v64) }, q64, 1e-6)
			wk := numGrad(func(x []float64) float64 { return loss(q64, x, v64) }, k64, 1e-6)
			wv := numGrad(func(x []float64) float64 { return loss(q64, k64, x) }, v64, 1e-6)

			o, lse := outBuf(s, 0), make([]float32, s.Batch*s.Heads*s.Tq)
			AttentionForward(o, lse, c.q, c.k, c.v, s)
			checkClose(t, "o vs float64", o, attn64(q64, k64, v64, s), 1e-5, 1e-4)
			d := make([]float32, len(lse))
			AttentionRowDot(d, c.do, o, s)
			dq, dk, dv := make([]float32, len(c.q)), make([]float32, len(c.k)), make([]float32, len(c.v))
			AttentionBackward(dq, dk, dv, c.do, c.q, c.k, c.v, lse, d, s)
			checkClose(t, "dq", dq, wq, 1e-4, 1e-3)
			checkClose(t, "dk", dk, wk, 1e-4, 1e-3)
			checkClose(t, "dv", dv, wv, 1e-4, 1e-3)
		})
	}
}

func TestAttentionFullyMasked(t *testing.T) {
	// Keys entirely in the future of every query: o = 0, lse = -Inf, and the
	// backward adds nothing.
	r := newRNG(64)
	c := newAttnCase(r, attnSpec{B: 2, Tq: 67, Tk: 70, H: 2, D: 8, causal: true, q0: 0, k0: 67})
	s := c.s
	o, lse := outBuf(s, 5), make([]float32, s.Batch*s.Heads*s.Tq)
	AttentionForward(o, lse, c.q, c.k, c.v, s)
	for i, l := range lse {
		if !math.IsInf(float64(l), -1) {
			t.Fatalf("lse[%d] = %v, want -Inf", i, l)
		}
	}
	for row := 0; row < s.Batch*s.Tq; row++ {
		for i := 0; i < s.Heads*s.HeadDim; i++ {
			if o[row*s.OStride+i] != 0 {
				t.Fatalf("o row %d [%d] = %v, want 0", row, i, o[row*s.OStride+i])
			}
		}
	}
	d := make([]float32, len(lse))
	AttentionRowDot(d, c.do, o, s)
	dq, dk, dv := newGrads(r, c)
	gq, gk, gv := append([]float32(nil), dq...), append([]float32(nil), dk...), append([]float32(nil), dv...)
	AttentionBackward(gq, gk, gv, c.do, c.q, c.k, c.v, lse, d, s)
	checkBitwise(t, "dq", gq, dq)
	checkBitwise(t, "dk", gk, dk)
	checkBitwise(t, "dv", gv, dv)
}

func TestAttnShapeValidate(t *testing.T) {
	good := AttnShape{Batch: 2, Tq: 3, Tk: 4, Heads: 2, HeadDim: 4, QStride: 24, KStride: 24, VStride: 24, OStride: 8,
		QSeg: make([]int32, 6), KSeg: make([]int32, 8)}
	nq, nk, no := 5*24+8, 7*24+8, 5*8+8
	if err := good.Validate(nq, nk, nk, no); err != nil {
		t.Fatalf("valid shape: %v", err)
	}
	for _, c := range []struct {
		name   string
		mutate func(s *AttnShape)
		nq     int
	}{
		{"negative Tq", func(s *AttnShape) { s.Tq = -1 }, nq},
		{"zero heads", func(s *AttnShape) { s.Heads = 0 }, nq},
		{"narrow stride", func(s *AttnShape) { s.OStride = 7 }, nq},
		{"short q", func(s *AttnShape) {}, nq - 1},
		{"one segment slice", func(s *AttnShape) { s.KSeg = nil }, nq},
		{"segment length", func(s *AttnShape) { s.QSeg = s.QSeg[:5] }, nq},
		{"NaN scale", func(s *AttnShape) { s.Scale = float32(math.NaN()) }, nq},
	} {
		s := good
		c.mutate(&s)
		if err := s.Validate(c.nq, nk, nk, no); err == nil {
			t.Errorf("%s: Validate accepted it", c.name)
		}
	}
}

func TestAttentionNoKeys(t *testing.T) {
	// Tk = 0 (an empty key block in a ring step): o = 0, lse = -Inf, and
	// the backward adds nothing.
	r := newRNG(65)
	s := AttnShape{Batch: 2, Tq: 5, Tk: 0, Heads: 2, HeadDim: 3, QStride: 6, KStride: 6, VStride: 6, OStride: 6, Causal: true}
	q := randVec(r, 2*5*6, 1)
	o, lse := outBuf(s, 9), make([]float32, 2*2*5)
	AttentionForward(o, lse, q, nil, nil, s)
	for i, l := range lse {
		if !math.IsInf(float64(l), -1) {
			t.Fatalf("lse[%d] = %v, want -Inf", i, l)
		}
	}
	checkBitwise(t, "o", o, make([]float32, len(o)))
	dq := randVec(r, len(q), 1)
	want := append([]float32(nil), dq...)
	d := make([]float32, len(lse))
	AttentionBackward(dq, nil, nil, randVec(r, len(o), 1), q, nil, nil, lse, d, s)
	checkBitwise(t, "dq", dq, want)
}
