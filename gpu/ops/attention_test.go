package ops

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/internal/testkit"
	"github.com/moetrain/moetrain/tensor"
)

// attnCase is one attention problem of the GPU tests.
type attnCase struct {
	B, Tq, Tk, H, D int
	causal          bool
	seg             int  // 0: none; 1: documents (monotone ids, Tq == Tk: shared); 2: random ids in {0,1,2}, q and k apart
	packed          bool // q, k, v at columns 0, C, 2C of one [N, 3C] buffer, o stride C (model layout; Tq == Tk)
	pad             int  // unpacked: extra floats per row of every buffer
	qpos0, kpos0    int
	scale           float32
}

func (c attnCase) String() string {
	return fmt.Sprintf("B%d_Tq%d_Tk%d_H%d_D%d_causal%v_seg%d_packed%v_pad%d_pos%d,%d_scale%g",
		c.B, c.Tq, c.Tk, c.H, c.D, c.causal, c.seg, c.packed, c.pad, c.qpos0, c.kpos0, c.scale)
}

// attnCases: every Tq = Tk in {1, 5, 64, 65, 130, 257} with every head size
// in {8, 24, 64, 128} (1–4 heads, batch 1–3, causal or not, each segment
// mode, packed / padded / plain layouts), then cross attention (Tq ≠ Tk,
// position offsets, rows that see no key), head sizes that are not
// multiples of 4 or sit just past a kernel bound, a negative and a large
// scale, and a longer packed causal sequence with documents.
func attnCases() []attnCase {
	rng := rand.New(rand.NewPCG(7, 11))
	var cs []attnCase
	i := 0
	for _, t := range []int{1, 5, 64, 65, 130, 257} {
		for _, d := range []int{8, 24, 64, 128} {
			c := attnCase{B: 1 + rng.IntN(3), Tq: t, Tk: t, H: 1 + rng.IntN(4), D: d,
				causal: i%2 == 0, seg: (i / 2) % 3}
			switch i % 3 {
			case 0:
				c.packed = true
			case 1:
				c.pad = 3
			}
			cs = append(cs, c)
			i++
		}
	}
	return append(cs,
		attnCase{B: 2, Tq: 70, Tk: 130, H: 2, D: 64, causal: true, qpos0: 100},          // queries late in a longer sequence
		attnCase{B: 2, Tq: 70, Tk: 50, H: 3, D: 24, causal: true, kpos0: 30, pad: 1},    // queries t < 30 see no key
		attnCase{B: 3, Tq: 100, Tk: 37, H: 2, D: 32, seg: 2},                            // cross attention, unmatched ids
		attnCase{B: 2, Tq: 37, Tk: 200, H: 1, D: 128, causal: true, qpos0: 150, seg: 2}, // both masks, Tq < Tk
		attnCase{B: 1, Tq: 65, Tk: 65, H: 3, D: 7, causal: true, packed: true},          // odd head size, unaligned k, v
		attnCase{B: 2, Tq: 130, Tk: 130, H: 2, D: 33, seg: 1, pad: 2},
		attnCase{B: 1, Tq: 96, Tk: 96, H: 2, D: 100, causal: true, seg: 1, packed: true},
		attnCase{B: 2, Tq: 80, Tk: 80, H: 2, D: 64, causal: true, scale: -0.3},
		attnCase{B: 1, Tq: 150, Tk: 150, H: 2, D: 64, scale: 0.6}, // peaked softmax
		attnCase{B: 1, Tq: 1030, Tk: 1030, H: 2, D: 64, causal: true, seg: 1, packed: true},
	)
}

// attnProblem is a case's host data, its shape, and device copies.
type attnProblem struct {
	c            attnCase
	s            tensor.AttnShape
	q, k, v      []float32 // host views (packed: sub-slices of qkv)
	qkv          []float32 // packed buffer (packed only)
	nq, nk, nv   int       // buffer lengths
	no           int
	devQ, devK   cuda.DevicePtr // device q, k, v (packed: into one buffer)
	devV         cuda.DevicePtr
	dqseg, dkseg cuda.DevicePtr // device segment ids, or 0
}

// attnDocs returns n monotone document ids per batch row (documents of 1 to 80
// tokens).
func attnDocs(rng *rand.Rand, b, n int) []int32 {
	ids := make([]int32, b*n)
	for bb := 0; bb < b; bb++ {
		id, left := int32(0), 1+rng.IntN(80)
		for t := 0; t < n; t++ {
			if left == 0 {
				id++
				left = 1 + rng.IntN(80)
			}
			ids[bb*n+t] = id
			left--
		}
	}
	return ids
}

func attnRandIDs(rng *rand.Rand, n int) []int32 {
	ids := make([]int32, n)
	for i := range ids {
		ids[i] = int32(rng.IntN(3))
	}
	return ids
}

func newAttnProblem(t *testing.T, o *Ops, c attnCase, rng *rand.Rand) *attnProblem {
	t.Helper()
	C := c.H * c.D
	p := &attnProblem{c: c}
	s := tensor.AttnShape{Batch: c.B, Tq: c.Tq, Tk: c.Tk, Heads: c.H, HeadDim: c.D,
		Causal: c.causal, QPos0: c.qpos0, KPos0: c.kpos0, Scale: c.scale}
	if c.packed {
		if c.Tq != c.Tk {
			t.Fatalf("%v: packed needs Tq == Tk", c)
		}
		s.QStride, s.KStride, s.VStride, s.OStride = 3*C, 3*C, 3*C, C
		p.qkv = randn(rng, c.B*c.Tq*3*C, 1)
		p.q, p.k, p.v = p.qkv, p.qkv[C:], p.qkv[2*C:]
		p.nq, p.nk, p.nv = len(p.q), len(p.k), len(p.v)
		base := upload(t, o, p.qkv)
		p.devQ, p.devK, p.devV = base, base.Add(4*C), base.Add(8*C)
	} else {
		s.QStride, s.KStride, s.VStride, s.OStride = C+c.pad, C+c.pad, C+c.pad, C+c.pad
		p.q = randn(rng, c.B*c.Tq*s.QStride, 1)
		p.k = randn(rng, c.B*c.Tk*s.KStride, 1)
		p.v = randn(rng, c.B*c.Tk*s.VStride, 1)
		p.nq, p.nk, p.nv = len(p.q), len(p.k), len(p.v)
		p.devQ, p.devK, p.devV = upload(t, o, p.q), upload(t, o, p.k), upload(t, o, p.v)
	}
	p.no = c.B * c.Tq * s.OStride
	switch c.seg {
	case 1:
		if c.Tq != c.Tk || c.qpos0 != c.kpos0 {
			t.Fatalf("%v: document ids need Tq == Tk", c)
		}
		s.QSeg = attnDocs(rng, c.B, c.Tq)
		s.KSeg = s.QSeg
	case 2:
		s.QSeg = attnRandIDs(rng, c.B*c.Tq)
		s.KSeg = attnRandIDs(rng, c.B*c.Tk)
	}
	if s.QSeg != nil {
		p.dqseg, p.dkseg = upload(t, o, s.QSeg), upload(t, o, s.KSeg)
	}
	if err := s.Validate(p.nq, p.nk, p.nv, p.no); err != nil {
		t.Fatalf("%v: %v", c, err)
	}
	p.s = s
	return p
}

// attnHeadCols gathers the head columns [off, off+width) of rows rows of buf.
func attnHeadCols(buf []float32, rows, stride, off, width int) []float32 {
	out := make([]float32, 0, rows*width)
	for r := 0; r < rows; r++ {
		out = append(out, buf[r*stride+off:][:width]...)
	}
	return out
}

// attnCheckClose fails unless ‖got − want‖ <= tol·max(‖want‖, 1e-2·sqrt(n))
// (the floor keeps near-zero gradients, e.g. of a query that sees one key,
// from turning rounding into a large relative error) and got has no NaN.
func attnCheckClose(t *testing.T, what string, got, want []float32, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	var num, den float64
	for i := range got {
		g, w := float64(got[i]), float64(want[i])
		if math.IsNaN(g) || math.IsInf(g, 0) {
			t.Fatalf("%s[%d] = %v (want %v)", what, i, g, w)
		}
		num += (g - w) * (g - w)
		den += w * w
	}
	den = math.Max(math.Sqrt(den), 1e-2*math.Sqrt(float64(len(got))))
	if e := math.Sqrt(num) / den; e > tol {
		t.Fatalf("%s: relative error %.3g > %g", what, e, tol)
	}
}

// attnCheckLSE compares log-sum-exps: the same rows -Inf, the rest close.
func attnCheckLSE(t *testing.T, what string, got, want []float32, tol float64) {
	t.Helper()
	var g, w []float32
	for i := range want {
		gi, wi := got[i], want[i]
		if math.IsInf(float64(wi), -1) != math.IsInf(float64(gi), -1) {
			t.Fatalf("%s[%d] = %v, want %v", what, i, gi, wi)
		}
		if !math.IsInf(float64(wi), -1) {
			g, w = append(g, gi), append(w, wi)
		}
	}
	if len(w) > 0 {
		attnCheckClose(t, what, g, w, tol)
	}
}

// gpuForward runs the GPU forward into poisoned buffers and returns out
// (whole OStride rows) and lse.
func (p *attnProblem) gpuForward(t *testing.T, o *Ops) (out, lse []float32, devOut, devLSE cuda.DevicePtr) {
	t.Helper()
	s := p.s
	nl := s.Batch * s.Heads * s.Tq
	devOut, devLSE = poisoned(t, o, p.no), poisoned(t, o, nl)
	if err := o.AttentionForward(devOut, devLSE, p.devQ, p.devK, p.devV, s, p.dqseg, p.dkseg); err != nil {
		t.Fatal(err)
	}
	return download[float32](t, o, devOut, p.no), download[float32](t, o, devLSE, nl), devOut, devLSE
}

// checkForward runs a forward (run returns out, whole OStride rows as
// float32, and lse) twice and checks the first run against the reference
// want, wantLSE: the heads' columns within tol, lse within lseTol (the same
// rows -Inf), padding columns untouched (still NaN), rows that see no key
// exactly 0; and the second run bitwise equal to the first.
func (p *attnProblem) checkForward(t *testing.T, want, wantLSE []float32, tol, lseTol float64, run func() (out, lse []float32)) {
	t.Helper()
	c, s, C := p.c, p.s, p.c.H*p.c.D
	rows := c.B * c.Tq
	got, gotLSE := run()
	attnCheckClose(t, "out", attnHeadCols(got, rows, s.OStride, 0, C), attnHeadCols(want, rows, s.OStride, 0, C), tol)
	attnCheckLSE(t, "lse", gotLSE, wantLSE, lseTol)
	for r := 0; r < rows; r++ {
		for i := C; i < s.OStride; i++ { // padding columns are not the kernel's
			if v := got[r*s.OStride+i]; !math.IsNaN(float64(v)) {
				t.Fatalf("out row %d padding column %d written: %v", r, i, v)
			}
		}
	}
	for b := 0; b < c.B; b++ { // rows that see no key: exactly 0
		for h := 0; h < c.H; h++ {
			for tq := 0; tq < c.Tq; tq++ {
				if !math.IsInf(float64(wantLSE[(b*c.H+h)*c.Tq+tq]), -1) {
					continue
				}
				for _, v := range got[(b*c.Tq+tq)*s.OStride+h*c.D:][:c.D] {
					if v != 0 {
						t.Fatalf("b %d h %d t %d sees no key but out = %v", b, h, tq, v)
					}
				}
			}
		}
	}

	got2, gotLSE2 := run()
	if i := testkit.FirstBitDiff(attnHeadCols(got2, rows, s.OStride, 0, C), attnHeadCols(got, rows, s.OStride, 0, C)); i >= 0 {
		t.Fatalf("out differs between two runs at %d", i)
	}
	if i := testkit.FirstBitDiff(gotLSE2, gotLSE); i >= 0 {
		t.Fatalf("lse differs between two runs at %d", i)
	}
}

func TestAttentionForward(t *testing.T) {
	attnTestForward(t, rand.New(rand.NewPCG(3, 4)), false)
}

// attnTestForward is TestAttentionForward over attnCases (out and lse
// within 1e-5) or, for bf16, TestAttentionForwardBF16: attnBF16Cases with
// q, k, v rounded to bf16 and the bf16 kernel (out within 1e-2, lse 1e-4).
func attnTestForward(t *testing.T, rng *rand.Rand, bf16 bool) {
	o := testOps(t)
	cases, outTol, lseTol := attnCases(), 1e-5, 1e-5
	if bf16 {
		cases, outTol, lseTol = attnBF16Cases(), 1e-2, 1e-4
	}
	for _, c := range cases {
		t.Run(c.String(), func(t *testing.T) {
			p := newAttnProblem(t, o, c, rng)
			var bq, bk, bv cuda.DevicePtr
			if bf16 {
				bq, bk, bv = p.toBF16(t, o)
			}
			want, wantLSE := make([]float32, p.no), make([]float32, c.B*c.H*c.Tq)
			tensor.AttentionForwardRef(want, wantLSE, p.q, p.k, p.v, p.s)
			p.checkForward(t, want, wantLSE, outTol, lseTol, func() ([]float32, []float32) {
				if bf16 {
					got, gotLSE, _, _ := p.gpuForwardBF16(t, o, bq, bk, bv)
					return got, gotLSE
				}
				got, gotLSE, _, _ := p.gpuForward(t, o)
				return got, gotLSE
			})
		})
	}
}

func TestAttentionRowDot(t *testing.T) {
	attnTestRowDot(t, rand.New(rand.NewPCG(5, 6)), false)
}

// attnTestRowDot checks AttentionRowDot (bf16: AttentionRowDotBF16 on dout
// and out rounded to bf16, the reference on the rounded values; products
// are exact in fp32 either way) against tensor.AttentionRowDot within 1e-5.
func attnTestRowDot(t *testing.T, rng *rand.Rand, bf16 bool) {
	o := testOps(t)
	for _, c := range []attnCase{{B: 1, Tq: 1, H: 1, D: 8}, {B: 3, Tq: 65, H: 4, D: 24, pad: 5}, {B: 2, Tq: 257, H: 2, D: 128}, {B: 2, Tq: 33, H: 3, D: 7}} {
		C := c.H * c.D
		s := tensor.AttnShape{Batch: c.B, Tq: c.Tq, Heads: c.H, HeadDim: c.D, OStride: C + c.pad}
		n := c.B * c.Tq * s.OStride
		dout, out := randn(rng, n, 1), randn(rng, n, 1)
		var hd, ho []uint16
		if bf16 {
			hd, ho = bf16RoundInPlace(dout), bf16RoundInPlace(out)
		}
		want := make([]float32, c.B*c.H*c.Tq)
		tensor.AttentionRowDot(want, dout, out, s)
		dd := poisoned(t, o, len(want))
		var err error
		if bf16 {
			err = o.AttentionRowDotBF16(dd, upload(t, o, hd), upload(t, o, ho), s)
		} else {
			err = o.AttentionRowDot(dd, upload(t, o, dout), upload(t, o, out), s)
		}
		if err != nil {
			t.Fatal(err)
		}
		attnCheckClose(t, fmt.Sprintf("%v d", c), download[float32](t, o, dd, len(want)), want, 1e-5)
	}
}

// attnGrads holds dq, dk, dv device buffers in p's layout.
type attnGrads struct{ dq, dk, dv, base cuda.DevicePtr }

// newGrads uploads init (packed: one [N, 3C] buffer; else three buffers of
// the q, k, v sizes, concatenated in init) as gradient buffers.
func (p *attnProblem) newGrads(t *testing.T, o *Ops, init []float32) attnGrads {
	if p.c.packed {
		return p.packedGrads(upload(t, o, init), 4)
	}
	return attnGrads{dq: upload(t, o, init[:p.nq]), dk: upload(t, o, init[p.nq:p.nq+p.nk]), dv: upload(t, o, init[p.nq+p.nk:])}
}

// newGradsBF16 is newGrads for bf16 gradients, every element NaN.
func (p *attnProblem) newGradsBF16(t *testing.T, o *Ops) attnGrads {
	if p.c.packed {
		return p.packedGrads(poisonedBF16At(t, o, len(p.qkv), 0), 2)
	}
	return attnGrads{dq: poisonedBF16At(t, o, p.nq, 0), dk: poisonedBF16At(t, o, p.nk, 0), dv: poisonedBF16At(t, o, p.nv, 0)}
}

// packedGrads cuts a packed [N, 3C] gradient buffer of es-byte elements.
func (p *attnProblem) packedGrads(base cuda.DevicePtr, es int) attnGrads {
	C := p.c.H * p.c.D
	return attnGrads{dq: base, dk: base.Add(es * C), dv: base.Add(2 * es * C), base: base}
}

func (p *attnProblem) gradLen() int {
	if p.c.packed {
		return len(p.qkv)
	}
	return p.nq + p.nk + p.nv
}

func (p *attnProblem) downloadGrads(t *testing.T, o *Ops, g attnGrads) []float32 {
	return downloadAttnGrads[float32](t, o, p, g)
}

// downloadGradsBF16 is downloadGrads for bf16 gradients.
func (p *attnProblem) downloadGradsBF16(t *testing.T, o *Ops, g attnGrads) []uint16 {
	return downloadAttnGrads[uint16](t, o, p, g)
}

func downloadAttnGrads[T any](t *testing.T, o *Ops, p *attnProblem, g attnGrads) []T {
	if p.c.packed {
		return download[T](t, o, g.base, len(p.qkv))
	}
	out := download[T](t, o, g.dq, p.nq)
	out = append(out, download[T](t, o, g.dk, p.nk)...)
	return append(out, download[T](t, o, g.dv, p.nv)...)
}

// grads splits a gradient buffer in p's layout into dq, dk, dv head columns.
func (p *attnProblem) grads(buf []float32) (dq, dk, dv []float32) {
	c, s := p.c, p.s
	C := c.H * c.D
	if c.packed {
		n := c.B * c.Tq
		return attnHeadCols(buf, n, 3*C, 0, C), attnHeadCols(buf, n, 3*C, C, C), attnHeadCols(buf, n, 3*C, 2*C, C)
	}
	return attnHeadCols(buf[:p.nq], c.B*c.Tq, s.QStride, 0, C),
		attnHeadCols(buf[p.nq:p.nq+p.nk], c.B*c.Tk, s.KStride, 0, C),
		attnHeadCols(buf[p.nq+p.nk:], c.B*c.Tk, s.VStride, 0, C)
}

// refGrads returns the reference gradients (added to zero) in p's layout.
func (p *attnProblem) refGrads(dout, lse, d []float32) []float32 {
	C := p.c.H * p.c.D
	g := make([]float32, p.gradLen())
	if p.c.packed {
		tensor.AttentionBackwardRef(g, g[C:], g[2*C:], dout, p.q, p.k, p.v, lse, d, p.s)
	} else {
		tensor.AttentionBackwardRef(g[:p.nq], g[p.nq:p.nq+p.nk], g[p.nq+p.nk:], dout, p.q, p.k, p.v, lse, d, p.s)
	}
	return g
}

// TestAttentionBackward checks, per case: the gradients from the reference
// forward's o, lse (and d from tensor.AttentionRowDot) against
// AttentionBackwardRef (zero-initialised buffers; padding columns stay
// zero); accumulation (random initial gradients end as init + the first
// run's gradients, bitwise); determinism (a rerun is bitwise equal); and the
// all-GPU chain (GPU forward, GPU row dot, GPU backward) against the
// reference.
func TestAttentionBackward(t *testing.T) {
	attnTestBackward(t, rand.New(rand.NewPCG(8, 9)), false)
}

// attnTestBackward is TestAttentionBackward over attnCases (gradients and
// chain within 1e-4, the GPU row dot within 1e-5) or, for bf16, over
// attnBF16Cases with q, k, v and dO rounded to bf16 and the bf16 kernels
// (gradients within 1e-2, the row dot within 1e-2, the chain within 2e-2).
func attnTestBackward(t *testing.T, rng *rand.Rand, bf16 bool) {
	o := testOps(t)
	cases, gradTol, dTol, chainTol := attnCases(), 1e-4, 1e-5, 1e-4
	backward, rowDot := o.AttentionBackward, o.AttentionRowDot
	if bf16 {
		cases, gradTol, dTol, chainTol = attnBF16Cases(), 1e-2, 1e-2, 2e-2
		backward, rowDot = o.AttentionBackwardBF16, o.AttentionRowDotBF16
	}
	for _, c := range cases {
		t.Run(c.String(), func(t *testing.T) {
			p := newAttnProblem(t, o, c, rng)
			s := p.s
			devQ, devK, devV := p.devQ, p.devK, p.devV
			if bf16 {
				devQ, devK, devV = p.toBF16(t, o)
			}
			out, lse := make([]float32, p.no), make([]float32, c.B*c.H*c.Tq)
			tensor.AttentionForwardRef(out, lse, p.q, p.k, p.v, s)
			dout := randn(rng, p.no, 1)
			var ddout cuda.DevicePtr
			if bf16 {
				ddout = upload(t, o, bf16RoundInPlace(dout))
			} else {
				ddout = upload(t, o, dout)
			}
			d := make([]float32, len(lse))
			tensor.AttentionRowDot(d, dout, out, s)
			want := p.refGrads(dout, lse, d)
			wq, wk, wv := p.grads(want)

			dlse, dd := upload(t, o, lse), upload(t, o, d)
			run := func(init []float32, lse, d cuda.DevicePtr) []float32 {
				t.Helper()
				g := p.newGrads(t, o, init)
				if err := backward(g.dq, g.dk, g.dv, ddout, devQ, devK, devV, lse, d, s, p.dqseg, p.dkseg); err != nil {
					t.Fatal(err)
				}
				return p.downloadGrads(t, o, g)
			}
			zero := make([]float32, p.gradLen())
			got := run(zero, dlse, dd)
			gq, gk, gv := p.grads(got)
			attnCheckClose(t, "dq", gq, wq, gradTol)
			attnCheckClose(t, "dk", gk, wk, gradTol)
			attnCheckClose(t, "dv", gv, wv, gradTol)
			for i, v := range got {
				if v != 0 && p.isPadding(i) {
					t.Fatalf("padding element %d written: %v", i, v)
				}
			}

			init := randn(rng, p.gradLen(), 1)
			for i, v := range run(init, dlse, dd) {
				if w := init[i] + got[i]; math.Float32bits(v) != math.Float32bits(w) {
					t.Fatalf("accumulate: element %d = %v, want init %v + grad %v = %v", i, v, init[i], got[i], w)
				}
			}

			if i := testkit.FirstBitDiff(run(zero, dlse, dd), got); i >= 0 {
				t.Fatalf("gradients differ between two runs at %d", i)
			}

			if bf16 {
				// The overwriting variant: bf16 of the gradients the adding
				// kernels put into zeroed buffers, padding untouched.
				g := p.newGradsBF16(t, o)
				if err := o.AttentionBackwardBF16Out(g.dq, g.dk, g.dv, ddout, devQ, devK, devV, dlse, dd, s, p.dqseg, p.dkseg); err != nil {
					t.Fatal(err)
				}
				for i, h := range p.downloadGradsBF16(t, o, g) {
					if p.isPadding(i) {
						if h != 0x7fc0 {
							t.Fatalf("bf16 out: padding element %d written: %#x", i, h)
						}
						continue
					}
					if w := bf16Round(got[i : i+1])[0]; bf16Value(h) != w {
						t.Fatalf("bf16 out: element %d = %v, want bf16(%v) = %v", i, bf16Value(h), got[i], w)
					}
				}
			}

			// All on the GPU: forward, row dot, backward.
			var gout, glse cuda.DevicePtr
			if bf16 {
				_, _, gout, glse = p.gpuForwardBF16(t, o, devQ, devK, devV)
			} else {
				_, _, gout, glse = p.gpuForward(t, o)
			}
			gd := poisoned(t, o, len(d))
			if err := rowDot(gd, ddout, gout, s); err != nil {
				t.Fatal(err)
			}
			attnCheckClose(t, "d", download[float32](t, o, gd, len(d)), d, dTol)
			cq, ck, cv := p.grads(run(zero, glse, gd))
			attnCheckClose(t, "chain dq", cq, wq, chainTol)
			attnCheckClose(t, "chain dk", ck, wk, chainTol)
			attnCheckClose(t, "chain dv", cv, wv, chainTol)
		})
	}
}

// isPadding reports whether element i of a gradient buffer in p's layout
// is a padding column (packed buffers have none).
func (p *attnProblem) isPadding(i int) bool {
	C := p.c.H * p.c.D
	switch {
	case p.c.packed:
		return false
	case i < p.nq:
		return i%p.s.QStride >= C
	case i < p.nq+p.nk:
		return (i-p.nq)%p.s.KStride >= C
	default:
		return (i-p.nq-p.nk)%p.s.VStride >= C
	}
}

// TestAttentionBadShapes needs no GPU: the wrappers reject these before
// launching anything, and empty problems launch nothing.
func TestAttentionBadShapes(t *testing.T) {
	o := &Ops{} // any launch would panic
	good := tensor.AttnShape{Batch: 2, Tq: 8, Tk: 8, Heads: 2, HeadDim: 16, QStride: 96, KStride: 96, VStride: 96, OStride: 32, Causal: true}
	seg := make([]int32, 16)
	p := cuda.DevicePtr(1 << 20)
	cases := []struct {
		name       string
		mod        func(s *tensor.AttnShape)
		qseg, kseg cuda.DevicePtr
	}{
		{"head dim 0", func(s *tensor.AttnShape) { s.HeadDim = 0 }, 0, 0},
		{"head dim 129", func(s *tensor.AttnShape) {
			s.HeadDim, s.QStride, s.KStride, s.VStride, s.OStride = 129, 774, 774, 774, 258
		}, 0, 0},
		{"no heads", func(s *tensor.AttnShape) { s.Heads = 0 }, 0, 0},
		{"negative Tq", func(s *tensor.AttnShape) { s.Tq = -1 }, 0, 0},
		{"q stride", func(s *tensor.AttnShape) { s.QStride = 31 }, 0, 0},
		{"o stride", func(s *tensor.AttnShape) { s.OStride = 31 }, 0, 0},
		{"NaN scale", func(s *tensor.AttnShape) { s.Scale = float32(math.NaN()) }, 0, 0},
		{"too many heads", func(s *tensor.AttnShape) {
			s.Heads, s.HeadDim, s.QStride, s.KStride, s.VStride, s.OStride = 70000, 1, 210000, 210000, 210000, 70000
		}, 0, 0},
		{"segments without device ids", func(s *tensor.AttnShape) { s.QSeg, s.KSeg = seg, seg }, 0, 0},
		{"device ids without segments", func(s *tensor.AttnShape) {}, p, p},
		{"one segment side", func(s *tensor.AttnShape) { s.QSeg = seg }, p, 0},
		{"short segments", func(s *tensor.AttnShape) { s.QSeg, s.KSeg = seg[:15], seg }, p, p},
	}
	for _, c := range cases {
		s := good
		c.mod(&s)
		err := o.AttentionForward(p, p, p, p, p, s, c.qseg, c.kseg)
		t.Logf("%s: %v", c.name, err)
		if err == nil {
			t.Errorf("%s: AttentionForward accepted %+v", c.name, s)
		}
		if err := o.AttentionBackward(p, p, p, p, p, p, p, p, p, s, c.qseg, c.kseg); err == nil {
			t.Errorf("%s: AttentionBackward accepted %+v", c.name, s)
		}
	}
	wantErrors(t, map[string]error{
		"forward, nil out":                 o.AttentionForward(0, p, p, p, p, good, 0, 0),
		"backward, nil dv":                 o.AttentionBackward(p, p, 0, p, p, p, p, p, p, good, 0, 0),
		"row dot, OStride < Heads·HeadDim": o.AttentionRowDot(p, p, p, tensor.AttnShape{Batch: 1, Tq: 4, Heads: 2, HeadDim: 8, OStride: 15}),
		"row dot, Heads 0":                 o.AttentionRowDot(p, p, p, tensor.AttnShape{Batch: 1, Tq: 4, Heads: 0, HeadDim: 8, OStride: 15}),
	})
	// Empty problems are valid and launch nothing.
	noBatch, noKeys := good, good
	noBatch.Batch, noKeys.Tk = 0, 0
	wantNoErrors(t, map[string]error{
		"Batch 0 forward":  o.AttentionForward(p, p, p, p, p, noBatch, 0, 0),
		"Batch 0 backward": o.AttentionBackward(p, p, p, p, p, p, p, p, p, noBatch, 0, 0),
		"Batch 0 row dot":  o.AttentionRowDot(p, p, p, noBatch),
		"Tk 0 backward":    o.AttentionBackward(p, p, p, p, p, p, p, p, p, noKeys, 0, 0),
	})
}

// TestAttentionNoKeys: with Tk = 0 every query row sees nothing: out = 0,
// lse = -Inf.
func TestAttentionNoKeys(t *testing.T) {
	o := testOps(t)
	s := tensor.AttnShape{Batch: 2, Tq: 70, Tk: 0, Heads: 2, HeadDim: 24, QStride: 48, KStride: 48, VStride: 48, OStride: 48, Causal: true}
	q := randn(rand.New(rand.NewPCG(1, 1)), 2*70*48, 1)
	dq := upload(t, o, q)
	out, lse := poisoned(t, o, len(q)), poisoned(t, o, 2*2*70)
	if err := o.AttentionForward(out, lse, dq, dq, dq, s, 0, 0); err != nil {
		t.Fatal(err)
	}
	for i, v := range download[float32](t, o, out, len(q)) {
		if v != 0 {
			t.Fatalf("out[%d] = %v", i, v)
		}
	}
	for i, v := range download[float32](t, o, lse, 2*2*70) {
		if !math.IsInf(float64(v), -1) {
			t.Fatalf("lse[%d] = %v", i, v)
		}
	}
}

// toBF16 rounds p's host q, k, v to bf16 in place (so the references see
// what the bf16 kernels see) and uploads bf16 copies in p's layout.
func (p *attnProblem) toBF16(t *testing.T, o *Ops) (q, k, v cuda.DevicePtr) {
	t.Helper()
	if p.c.packed {
		C := p.c.H * p.c.D
		base := upload(t, o, bf16RoundInPlace(p.qkv))
		return base, base.Add(2 * C), base.Add(4 * C)
	}
	return upload(t, o, bf16RoundInPlace(p.q)), upload(t, o, bf16RoundInPlace(p.k)), upload(t, o, bf16RoundInPlace(p.v))
}

// attnBF16Cases are the cases of attnCases the bf16 kernels take (head
// sizes that are multiples of 8, padded layouts padded by 8), then cases
// for the bf16 kernels' own paths: 128-row blocks over 64-row tiles (T not
// a multiple of either, several blocks per head and heads per block
// numbering), head sizes just under each kernel bound (every 16-column
// slice holds data, but not every column) and between bounds, a negative
// scale on both kernel sizes, cross attention whose rows or keys see
// nothing at all in whole blocks, and the production sequence length.
func attnBF16Cases() []attnCase {
	var cs []attnCase
	for _, c := range attnCases() {
		if c.D%8 != 0 {
			continue
		}
		if c.pad != 0 {
			c.pad = 8
		}
		cs = append(cs, c)
	}
	return append(cs,
		attnCase{B: 2, Tq: 300, Tk: 300, H: 3, D: 56, causal: true, packed: true},          // DMAX 64, D < DMAX in the last slice
		attnCase{B: 1, Tq: 200, Tk: 200, H: 2, D: 120, causal: true, seg: 1, pad: 8},       // DMAX 128, D < DMAX in the last slice
		attnCase{B: 2, Tq: 260, Tk: 260, H: 2, D: 96, causal: true, scale: -0.2},           // DMAX 128, two empty slices, negative scale
		attnCase{B: 1, Tq: 190, Tk: 190, H: 2, D: 128, causal: true, seg: 2, scale: -0.15}, // negative scale with Q fragments in registers
		attnCase{B: 2, Tq: 140, Tk: 140, H: 2, D: 24, causal: true, scale: -0.5, pad: 8},   // negative scale, DMAX 64 with partial slices
		attnCase{B: 3, Tq: 300, Tk: 200, H: 2, D: 64, causal: true, kpos0: 150},            // rows t < 150 see no key: whole query blocks empty
		attnCase{B: 2, Tq: 100, Tk: 300, H: 2, D: 64, causal: true},                        // keys j >= 100 see no query: whole key blocks empty
		attnCase{B: 2, Tq: 200, Tk: 333, H: 2, D: 128, causal: true, qpos0: 133, seg: 2},   // queries at the end of the keys
		attnCase{B: 1, Tq: 129, Tk: 383, H: 3, D: 64, qpos0: 7, kpos0: 3, seg: 2, pad: 8},  // cross attention with ids, not causal
		attnCase{B: 3, Tq: 384, Tk: 384, H: 5, D: 64, causal: true, packed: true},          // 15 (b, h) pairs × 3 blocks
		attnCase{B: 1, Tq: 600, Tk: 600, H: 2, D: 128, causal: true, seg: 1, packed: true},
		attnCase{B: 1, Tq: 2048, Tk: 2048, H: 1, D: 64, causal: true, packed: true}, // gpu-small's sequence
	)
}

// TestAttentionForwardBF16 runs the cases of attnCases whose head size is a
// multiple of 8 (padded layouts padded by 8) with q, k, v rounded to bf16,
// against the float64 reference on the rounded values: out within 1e-2
// (it is rounded to bf16, and so are the probabilities of P·V), lse within
// 1e-4; every out element written, padding untouched, two runs bitwise equal.
func TestAttentionForwardBF16(t *testing.T) {
	attnTestForward(t, rand.New(rand.NewPCG(12, 13)), true)
}

// gpuForwardBF16 runs the bf16 forward on device q, k, v into poisoned
// buffers and returns out (whole OStride rows, as float32) and lse, and the
// device out (bf16) and lse.
func (p *attnProblem) gpuForwardBF16(t *testing.T, o *Ops, q, k, v cuda.DevicePtr) (out, lse []float32, devOut, devLSE cuda.DevicePtr) {
	t.Helper()
	nl := p.c.B * p.c.H * p.c.Tq
	devOut, devLSE = poisonedBF16At(t, o, p.no, 0), poisoned(t, o, nl)
	if err := o.AttentionForwardBF16(devOut, devLSE, q, k, v, p.s, p.dqseg, p.dkseg); err != nil {
		t.Fatal(err)
	}
	return bf16Decode(download[uint16](t, o, devOut, p.no)), download[float32](t, o, devLSE, nl), devOut, devLSE
}

// TestAttentionBackwardBF16 is TestAttentionBackward for the bf16 kernels,
// on the bf16 cases with q, k, v and dO rounded to bf16 (the reference sees
// the rounded values): gradients from the reference lse and d within 1e-2,
// padding untouched, accumulation bitwise init + gradient, reruns bitwise
// equal; the overwriting variant (AttentionBackwardBF16Out) writes bf16 of
// the zero-initialised gradients, padding untouched; then the all-bf16 chain (bf16 forward, bf16 row dot from the bf16
// out, bf16 backward) within 2e-2 (d now comes from a rounded out).
func TestAttentionBackwardBF16(t *testing.T) {
	attnTestBackward(t, rand.New(rand.NewPCG(14, 15)), true)
}

// TestAttentionRowDotBF16: the bf16 row dot against tensor.AttentionRowDot
// on the rounded values (products exact in fp32, so 1e-5).
func TestAttentionRowDotBF16(t *testing.T) {
	attnTestRowDot(t, rand.New(rand.NewPCG(16, 17)), true)
}

// TestAttentionBF16BadArgs needs no GPU: the bf16 kernel's extra
// requirements are checked before any launch.
func TestAttentionBF16BadArgs(t *testing.T) {
	o := &Ops{}
	p := cuda.DevicePtr(1 << 20)
	good := tensor.AttnShape{Batch: 2, Tq: 8, Tk: 8, Heads: 2, HeadDim: 16, QStride: 96, KStride: 96, VStride: 96, OStride: 32, Causal: true}
	for _, c := range []struct {
		name         string
		mod          func(s *tensor.AttnShape)
		out, q, k, v cuda.DevicePtr
	}{
		{"head dim 12", func(s *tensor.AttnShape) { s.HeadDim = 12 }, p, p, p, p},
		{"odd stride", func(s *tensor.AttnShape) { s.KStride = 97 }, p, p, p, p},
		{"o stride", func(s *tensor.AttnShape) { s.OStride = 36 }, p, p, p, p},
		{"head dim 136", func(s *tensor.AttnShape) {
			s.HeadDim, s.QStride, s.KStride, s.VStride, s.OStride = 136, 816, 816, 816, 272
		}, p, p, p, p},
		{"misaligned k", func(s *tensor.AttnShape) {}, p, p, p + 8, p},
		{"misaligned out", func(s *tensor.AttnShape) {}, p + 2, p, p, p},
		{"nil v", func(s *tensor.AttnShape) {}, p, p, p, 0},
	} {
		s := good
		c.mod(&s)
		err := o.AttentionForwardBF16(c.out, p, c.q, c.k, c.v, s, 0, 0)
		t.Logf("%s: %v", c.name, err)
		if err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
	for _, c := range []struct {
		name     string
		mod      func(s *tensor.AttnShape)
		dout, dq cuda.DevicePtr
	}{
		{"head dim 12", func(s *tensor.AttnShape) { s.HeadDim = 12 }, p, p},
		{"o stride", func(s *tensor.AttnShape) { s.OStride = 36 }, p, p},
		{"misaligned dout", func(s *tensor.AttnShape) {}, p + 4, p},
		{"nil dq", func(s *tensor.AttnShape) {}, p, 0},
		{"NaN scale", func(s *tensor.AttnShape) { s.Scale = float32(math.NaN()) }, p, p},
	} {
		s := good
		c.mod(&s)
		err := o.AttentionBackwardBF16(c.dq, p, p, c.dout, p, p, p, p, p, s, 0, 0)
		t.Logf("backward %s: %v", c.name, err)
		if err == nil {
			t.Errorf("backward %s: accepted", c.name)
		}
	}
	if err := o.AttentionRowDotBF16(p, p, p, tensor.AttnShape{Batch: 1, Tq: 4, Heads: 2, HeadDim: 8, OStride: 15}); err == nil {
		t.Error("AttentionRowDotBF16 accepted OStride < Heads·HeadDim")
	}
	// Empty problems are valid and launch nothing.
	noQueries := good
	noQueries.Tq = 0
	wantNoErrors(t, map[string]error{
		"Tq 0 forward":  o.AttentionForwardBF16(p, p, p, p, p, noQueries, 0, 0),
		"Tq 0 backward": o.AttentionBackwardBF16(p, p, p, p, p, p, p, p, p, noQueries, 0, 0),
		"Tq 0 row dot":  o.AttentionRowDotBF16(p, p, p, noQueries),
	})
}
