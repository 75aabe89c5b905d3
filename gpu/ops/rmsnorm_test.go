package ops

import (
	"math/rand/v2"
	"testing"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/internal/testkit"
	"github.com/moetrain/moetrain/tensor"
)

// ewRowNs and ewRowDs are the row-kernel shapes, every n with every d:
// mostly not multiples of the vector width, the block or the backward's
// 32-row blocks; 1028 and 2048 give threads more than one float4 chunk (a
// ragged and an even split). Tests add misaligned buffers (off = 1) for the
// float4 path.
var ewRowNs, ewRowDs = []int{1, 3, 37, 300}, []int{1, 5, 64, 130, 1027, 1028, 2048}

// ewRowCase is a row-kernel test case: n rows of width d at element offset
// off of their buffers.
type ewRowCase struct{ n, d, off int }

// ewRowCases are every ewRowNs n with every ewRowDs d, then the extra
// (n, d) shapes, each at offsets 0 and 1; alignedOnly leaves out offset 1
// where d%4 != 0 (rows that take the scalar path at either offset).
func ewRowCases(alignedOnly bool, extra ...[2]int) []ewRowCase {
	var shapes [][2]int
	for _, n := range ewRowNs {
		for _, d := range ewRowDs {
			shapes = append(shapes, [2]int{n, d})
		}
	}
	var cs []ewRowCase
	for _, sh := range append(shapes, extra...) {
		for _, off := range []int{0, 1} {
			if !(alignedOnly && off == 1 && sh[1]%4 != 0) {
				cs = append(cs, ewRowCase{sh[0], sh[1], off})
			}
		}
	}
	return cs
}

func TestRMSNorm(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(13, 14))
	const eps = 1e-5
	for _, c := range ewRowCases(true) {
		n, d, off := c.n, c.d, c.off
		in := randn(rng, n*d, 1.5)
		w := randn(rng, d, 0.2)
		for j := range w {
			w[j] += 1
		}
		dIn, dW := uploadAt(t, o, in, off), uploadAt(t, o, w, off)
		dout, drstd := poisonedAt(t, o, n*d, off), poisoned(t, o, n)
		if err := o.RMSNormForward(dout, drstd, dIn, dW, n, d, eps); err != nil {
			t.Fatal(err)
		}
		out, rstd := make([]float32, n*d), make([]float32, n)
		tensor.RMSNormForward(out, rstd, in, w, n, d, eps)
		if e := relErr(download[float32](t, o, dout, n*d), out); e > 1e-5 {
			t.Fatalf("n=%d d=%d off=%d forward out rel err %g", n, d, off, e)
		}
		if e := relErr(download[float32](t, o, drstd, n), rstd); e > 1e-5 {
			t.Fatalf("n=%d d=%d off=%d forward rstd rel err %g", n, d, off, e)
		}

		// Backward from the CPU's rstd, accumulating into random din
		// and dweight, twice from the same start (bitwise equal).
		g := randn(rng, n*d, 1)
		gin0, gw0 := randn(rng, n*d, 1), randn(rng, d, 1)
		dg, drs := uploadAt(t, o, g, off), upload(t, o, rstd)
		scratch := poisoned(t, o, RMSNormBackwardScratch(n, d))
		var first [2][]float32
		for run := 0; run < 2; run++ {
			dgin, dgw := uploadAt(t, o, gin0, off), uploadAt(t, o, gw0, off)
			if err := o.RMSNormBackward(dgin, dgw, dg, dIn, dW, drs, scratch, n, d); err != nil {
				t.Fatal(err)
			}
			gotIn, gotW := download[float32](t, o, dgin, n*d), download[float32](t, o, dgw, d)
			if run == 0 {
				wantIn, wantW := append([]float32(nil), gin0...), append([]float32(nil), gw0...)
				tensor.RMSNormBackward(wantIn, wantW, g, in, w, rstd, n, d)
				if e := relErr(gotIn, wantIn); e > 1e-4 {
					t.Fatalf("n=%d d=%d off=%d backward din rel err %g", n, d, off, e)
				}
				if e := relErr(gotW, wantW); e > 1e-4 {
					t.Fatalf("n=%d d=%d off=%d backward dweight rel err %g", n, d, off, e)
				}
				first = [2][]float32{gotIn, gotW}
				continue
			}
			if i := testkit.FirstBitDiff(gotIn, first[0]); i >= 0 {
				t.Fatalf("n=%d d=%d off=%d backward din not reproducible at %d", n, d, off, i)
			}
			if i := testkit.FirstBitDiff(gotW, first[1]); i >= 0 {
				t.Fatalf("n=%d d=%d off=%d backward dweight not reproducible at %d", n, d, off, i)
			}
		}

		// Without dweight (and without scratch).
		dgin := uploadAt(t, o, gin0, off)
		if err := o.RMSNormBackward(dgin, 0, dg, dIn, dW, drs, 0, n, d); err != nil {
			t.Fatal(err)
		}
		wantIn := append([]float32(nil), gin0...)
		tensor.RMSNormBackward(wantIn, nil, g, in, w, rstd, n, d)
		if e := relErr(download[float32](t, o, dgin, n*d), wantIn); e > 1e-4 {
			t.Fatalf("n=%d d=%d off=%d backward (no dweight) din rel err %g", n, d, off, e)
		}
	}
}

func TestRMSNormBF16(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(15, 16))
	const eps = 1e-6
	for _, c := range ewRowCases(false) {
		n, d, off := c.n, c.d, c.off
		in := bf16Round(randn(rng, n*d, 1))
		w := randn(rng, d, 0.2)
		for j := range w {
			w[j] += 1
		}
		dIn, dW := uploadAt(t, o, bf16Encode(in), off), upload(t, o, w)
		// forward runs fwd into poisoned out (bf16) and rstd and
		// checks them against tensor.RMSNormForward of x (out
		// rounded to bf16 once); it returns the reference rstd.
		forward := func(what string, x []float32, fwd func(dout, drstd cuda.DevicePtr) error) []float32 {
			t.Helper()
			dout, drstd := poisonedBF16At(t, o, n*d, off), poisoned(t, o, n)
			if err := fwd(dout, drstd); err != nil {
				t.Fatal(err)
			}
			out, rstd := make([]float32, n*d), make([]float32, n)
			tensor.RMSNormForward(out, rstd, x, w, n, d, eps)
			if e := ewRelErrBF16(t, o, dout, out); e > ewBF16Tol {
				t.Fatalf("n=%d d=%d off=%d %s out rel err %g", n, d, off, what, e)
			}
			if e := relErr(download[float32](t, o, drstd, n), rstd); e > 1e-5 {
				t.Fatalf("n=%d d=%d off=%d %s rstd rel err %g", n, d, off, what, e)
			}
			return rstd
		}
		rstd := forward("forward", in, func(dout, drstd cuda.DevicePtr) error {
			return o.RMSNormForwardBF16(dout, drstd, dIn, dW, n, d, eps)
		})

		// fp32 in, bf16 out: the fp32 reference on unrounded input,
		// rounded once.
		in32 := randn(rng, n*d, 1)
		forward("f32→bf16 forward", in32, func(dout, drstd cuda.DevicePtr) error {
			return o.RMSNormForwardF32BF16(dout, drstd, uploadAt(t, o, in32, off), dW, n, d, eps)
		})

		g := randn(rng, n*d, 1)
		gin0, gw0 := randn(rng, n*d, 1), randn(rng, d, 1)
		dg, drs := upload(t, o, g), upload(t, o, rstd)
		dgin, dgw := upload(t, o, gin0), upload(t, o, gw0)
		scratch := poisoned(t, o, RMSNormBackwardScratch(n, d))
		if err := o.RMSNormBackwardBF16(dgin, dgw, dg, dIn, dW, drs, scratch, n, d); err != nil {
			t.Fatal(err)
		}
		wantIn, wantW := append([]float32(nil), gin0...), append([]float32(nil), gw0...)
		tensor.RMSNormBackward(wantIn, wantW, g, in, w, rstd, n, d)
		if e := relErr(download[float32](t, o, dgin, n*d), wantIn); e > 1e-4 {
			t.Fatalf("n=%d d=%d off=%d backward din rel err %g", n, d, off, e)
		}
		if e := relErr(download[float32](t, o, dgw, d), wantW); e > 1e-4 {
			t.Fatalf("n=%d d=%d off=%d backward dweight rel err %g", n, d, off, e)
		}
	}
}

func TestRMSNormBadSizes(t *testing.T) {
	o := &Ops{}
	p := cuda.DevicePtr(1 << 20)
	wantErrors(t, map[string]error{
		"fwd d=0":          o.RMSNormForward(p, p, p, p, 3, 0, 1e-5),
		"fwd n<0":          o.RMSNormForward(p, p, p, p, -1, 4, 1e-5),
		"fwd null rstd":    o.RMSNormForward(p, 0, p, p, 3, 4, 1e-5),
		"fwd bf16 null w":  o.RMSNormForwardBF16(p, p, p, 0, 3, 4, 1e-5),
		"bwd d=0":          o.RMSNormBackward(p, p, p, p, p, p, p, 3, 0),
		"bwd n<0":          o.RMSNormBackward(p, p, p, p, p, p, p, -3, 4),
		"bwd null dout":    o.RMSNormBackward(p, p, 0, p, p, p, p, 3, 4),
		"bwd null scratch": o.RMSNormBackward(p, p, p, p, p, p, 0, 3, 4),
		"bwd wide":         o.RMSNormBackward(p, p, p, p, p, p, p, 3, rmsnormMaxD+1),
		"bwd bf16 null in": o.RMSNormBackwardBF16(p, p, p, 0, p, p, p, 3, 4),
	})
	if err := o.RMSNormForward(0, 0, 0, 0, 0, 8, 1e-5); err != nil {
		t.Errorf("empty: %v", err)
	}
	if got := RMSNormBackwardScratch(33, 10); got != 2*10 {
		t.Errorf("RMSNormBackwardScratch(33, 10) = %d", got)
	}
}
