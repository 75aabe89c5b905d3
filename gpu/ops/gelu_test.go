package ops

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/moetrain/moetrain/cuda"
)

// ewGELURef is tensor.GELUForwardRef with Φ(x) = erfc(−x/√2)/2: the same
// float64 math, but 1 + erf(x/√2) loses all relative accuracy below x ≈ −7,
// where a test of one or three elements can land.
func ewGELURef(out, in []float32) {
	for i := range out {
		x := float64(in[i])
		out[i] = float32(x * 0.5 * math.Erfc(-x/math.Sqrt2))
	}
}

// ewGELUBackwardRef is tensor.GELUBackwardRef through erfc (accumulates).
func ewGELUBackwardRef(din, dout, in []float32) {
	const invSqrt2Pi = 0.3989422804014327
	for i := range din {
		x := float64(in[i])
		cdf := 0.5 * math.Erfc(-x/math.Sqrt2)
		din[i] += dout[i] * float32(cdf+x*invSqrt2Pi*math.Exp(-0.5*x*x))
	}
}

// ewCheckGELUBackward runs an accumulating GELU backward at x (bwd adds
// into din, float32 at offset off, the gradient given dout, float32 at
// offset off) on random dout and din, checks it against ewGELUBackwardRef
// within 1e-4 and returns dout.
func ewCheckGELUBackward(t *testing.T, o *Ops, rng *rand.Rand, x []float32, off int, bwd func(din, dout cuda.DevicePtr) error) []float32 {
	t.Helper()
	n := len(x)
	g := randn(rng, n, 1)
	din := randn(rng, n, 1) // backward accumulates
	dg, ddin := uploadAt(t, o, g, off), uploadAt(t, o, din, off)
	if err := bwd(ddin, dg); err != nil {
		t.Fatal(err)
	}
	ewGELUBackwardRef(din, g, x)
	if e := relErr(download[float32](t, o, ddin, n), din); e > 1e-4 {
		t.Fatalf("n=%d off=%d backward rel err %g", n, off, e)
	}
	return g
}

func TestGELU(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(9, 10))
	for _, n := range ewSizes {
		for _, off := range []int{0, 1} {
			x := randn(rng, n, 3) // reaches both tails
			dx := uploadAt(t, o, x, off)
			dout := poisonedAt(t, o, n, off)
			if err := o.GELUForward(dout, dx, n); err != nil {
				t.Fatal(err)
			}
			want := make([]float32, n)
			ewGELURef(want, x)
			if e := relErr(download[float32](t, o, dout, n), want); e > 1e-5 {
				t.Fatalf("n=%d off=%d forward rel err %g", n, off, e)
			}

			ewCheckGELUBackward(t, o, rng, x, off, func(din, dout cuda.DevicePtr) error {
				return o.GELUBackward(din, dout, dx, n)
			})
		}
	}
	// In place: out aliases in.
	x := randn(rng, 1027, 2)
	dx := upload(t, o, x)
	if err := o.GELUForward(dx, dx, len(x)); err != nil {
		t.Fatal(err)
	}
	want := make([]float32, len(x))
	ewGELURef(want, x)
	if e := relErr(download[float32](t, o, dx, len(x)), want); e > 1e-5 {
		t.Fatalf("in place forward rel err %g", e)
	}
}

func TestGELUBF16(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(11, 12))
	for _, n := range ewSizes {
		for _, off := range []int{0, 1} {
			x := bf16Round(randn(rng, n, 3))
			dx := uploadAt(t, o, bf16Encode(x), off)
			dout := poisonedBF16At(t, o, n, off)
			if err := o.GELUForwardBF16(dout, dx, n); err != nil {
				t.Fatal(err)
			}
			want := make([]float32, n)
			ewGELURef(want, x)
			if e := ewRelErrBF16(t, o, dout, want); e > ewBF16Tol {
				t.Fatalf("n=%d off=%d forward rel err %g", n, off, e)
			}

			g := ewCheckGELUBackward(t, o, rng, x, off, func(din, dout cuda.DevicePtr) error {
				return o.GELUBackwardBF16(din, dout, dx, n)
			})

			// The all-bf16 backward that overwrites: the rounded reference.
			gb := bf16Round(g)
			dgb := uploadAt(t, o, bf16Encode(gb), off)
			dinb := poisonedBF16At(t, o, n, off)
			if err := o.GELUBackwardBF16Out(dinb, dgb, dx, n); err != nil {
				t.Fatal(err)
			}
			wantb := make([]float32, n)
			ewGELUBackwardRef(wantb, gb, x)
			if e := ewRelErrBF16(t, o, dinb, wantb); e > ewBF16Tol {
				t.Fatalf("n=%d off=%d bf16-out backward rel err %g", n, off, e)
			}
		}
	}
}

func TestGELUBadSizes(t *testing.T) {
	o := &Ops{}
	p := cuda.DevicePtr(1 << 20)
	wantErrors(t, map[string]error{
		"fwd n<0":       o.GELUForward(p, p, -1),
		"fwd null":      o.GELUForward(0, p, 4),
		"fwd bf16 null": o.GELUForwardBF16(p, 0, 4),
		"bwd n<0":       o.GELUBackward(p, p, p, -2),
		"bwd null":      o.GELUBackward(p, 0, p, 4),
		"bwd bf16 null": o.GELUBackwardBF16(p, p, 0, 4),
	})
	if err := o.GELUForward(0, 0, 0); err != nil {
		t.Errorf("empty: %v", err)
	}
}
