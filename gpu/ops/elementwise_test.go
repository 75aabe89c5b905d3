package ops

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/internal/testkit"
	"github.com/moetrain/moetrain/optim"
	"github.com/moetrain/moetrain/tensor"
)

// Helpers of the elementwise/norm/embedding/cross-entropy/optimizer tests
// (prefixed ew so they cannot clash with other kernel families' tests).

// ewBF16Tol bounds relErr of a bf16 output against the float reference
// rounded to bf16: one rounding of at most 2^-9 relative per element plus
// float-level differences.
const ewBF16Tol = 3e-3

// ewRelErrBF16 is relErr of the len(want) bf16 values at p (downloaded and
// widened) against want rounded to bf16: what ewBF16Tol bounds.
func ewRelErrBF16(t testing.TB, o *Ops, p cuda.DevicePtr, want []float32) float64 {
	t.Helper()
	return relErr(bf16Decode(download[uint16](t, o, p, len(want))), bf16Round(want))
}

// ewF64 is one float64 on the device set to NaN.
func ewF64(t testing.TB, o *Ops, n int) cuda.DevicePtr {
	t.Helper()
	s := make([]float64, n)
	for i := range s {
		s[i] = math.NaN()
	}
	return upload(t, o, s)
}

// ewRel64 is |got−want|/|want| (|got−want| for want = 0), +Inf for NaN.
func ewRel64(got, want float64) float64 {
	if math.IsNaN(got) {
		return math.Inf(1)
	}
	if want == 0 {
		return math.Abs(got)
	}
	return math.Abs(got-want) / math.Abs(want)
}

// ewSizes are flat lengths around the vector width and the reduction chunk.
var ewSizes = []int{1, 3, 37, 300, 1027, 8191, 8193, 100003}

func TestElementwiseAddScale(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range ewSizes {
		for _, off := range []int{0, 1} {
			x, y := randn(rng, n, 1), randn(rng, n, 1)
			dx, dy := uploadAt(t, o, x, off), uploadAt(t, o, y, off)
			if err := o.AddInPlace(dy, dx, n); err != nil {
				t.Fatal(err)
			}
			tensor.AddInPlace(y, x)
			if i := testkit.FirstBitDiff(download[float32](t, o, dy, n), y); i >= 0 {
				t.Fatalf("n=%d off=%d AddInPlace differs at %d", n, off, i)
			}
			if err := o.Scale(dy, -0.37, n); err != nil {
				t.Fatal(err)
			}
			tensor.Scale(y, -0.37)
			if i := testkit.FirstBitDiff(download[float32](t, o, dy, n), y); i >= 0 {
				t.Fatalf("n=%d off=%d Scale differs at %d", n, off, i)
			}
		}
	}
}

func TestSumSquaresGlobalNorm(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(5, 6))
	for _, n := range append([]int{0, 8192, 3 * 8192}, ewSizes...) {
		for _, off := range []int{0, 1} {
			x := randn(rng, n, 2)
			dx := uploadAt(t, o, x, off)
			scratch := poisoned(t, o, SumSquaresScratch(n))
			out := ewF64(t, o, 2)
			if err := o.SumSquares(dx, n, scratch, out); err != nil {
				t.Fatal(err)
			}
			if err := o.GlobalNorm(dx, n, scratch, out.Add(8)); err != nil {
				t.Fatal(err)
			}
			got := download[float64](t, o, out, 2)
			want := tensor.SumSquares(x)
			if e := ewRel64(got[0], want); e > 1e-12 {
				t.Fatalf("n=%d off=%d SumSquares = %v, want %v", n, off, got[0], want)
			}
			if e := ewRel64(got[1], optim.GlobalNorm(x)); e > 1e-12 {
				t.Fatalf("n=%d off=%d GlobalNorm = %v, want %v", n, off, got[1], optim.GlobalNorm(x))
			}
			// Deterministic: a second run gives the same bits.
			if err := o.SumSquares(dx, n, scratch, out); err != nil {
				t.Fatal(err)
			}
			if again := download[float64](t, o, out, 1); math.Float64bits(again[0]) != math.Float64bits(got[0]) {
				t.Fatalf("n=%d off=%d SumSquares not reproducible: %v then %v", n, off, got[0], again[0])
			}
		}
	}
}

func TestCastBF16(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(7, 8))
	special := []float32{0, float32(math.Copysign(0, -1)), 1, -1, float32(math.Inf(1)), float32(math.Inf(-1)),
		float32(math.NaN()), math.MaxFloat32, -math.MaxFloat32, 1e-40, -3e-39, math.SmallestNonzeroFloat32,
		math.Float32frombits(0x3f808000), math.Float32frombits(0x3f818000), // ties: to even, down then up
		math.Float32frombits(0x3f808001), math.Float32frombits(0x7f7f8000)} // just above a tie; the top tie, to +Inf
	for _, n := range ewSizes {
		for _, off := range []int{0, 1} {
			x := randn(rng, n, 10)
			copy(x, special)
			dx := uploadAt(t, o, x, off)
			dh := poisonedBF16At(t, o, n, off)
			if err := o.CastF32ToBF16(dh, dx, n); err != nil {
				t.Fatal(err)
			}
			got := download[uint16](t, o, dh, n)
			for i, v := range x {
				w := bf16Bits(v)
				if v != v {
					if g := bf16Value(got[i]); g == g {
						t.Fatalf("n=%d off=%d: bf16(NaN) = %#04x", n, off, got[i])
					}
					continue
				}
				if got[i] != w {
					t.Fatalf("n=%d off=%d: bf16(%g = %#08x) = %#04x, want %#04x", n, off, v, math.Float32bits(v), got[i], w)
				}
			}
			h := bf16Encode(x)
			dh2 := uploadAt(t, o, h, off)
			df := poisonedAt(t, o, n, off)
			if err := o.CastBF16ToF32(df, dh2, n); err != nil {
				t.Fatal(err)
			}
			back := download[float32](t, o, df, n)
			for i := range h {
				w := bf16Value(h[i])
				if w != w {
					if back[i] == back[i] {
						t.Fatalf("n=%d off=%d: float(bf16 NaN) = %g", n, off, back[i])
					}
					continue
				}
				if math.Float32bits(back[i]) != math.Float32bits(w) {
					t.Fatalf("n=%d off=%d: float(%#04x) = %g, want %g", n, off, h[i], back[i], w)
				}
			}
		}
	}
}

// TestElementwiseBadSizes needs no GPU: the checks come before any launch.
func TestElementwiseBadSizes(t *testing.T) {
	o := &Ops{}
	p := cuda.DevicePtr(1 << 20)
	wantErrors(t, map[string]error{
		"add n<0":         o.AddInPlace(p, p, -1),
		"add null":        o.AddInPlace(0, p, 5),
		"scale n<0":       o.Scale(p, 2, -3),
		"scale null":      o.Scale(0, 2, 3),
		"sumsq n<0":       o.SumSquares(p, -1, p, p),
		"sumsq out null":  o.SumSquares(p, 5, p, 0),
		"sumsq out align": o.SumSquares(p, 5, p, p+4),
		"sumsq scratch":   o.SumSquares(p, 5, 0, p),
		"norm x null":     o.GlobalNorm(0, 5, p, p),
		"cast n<0":        o.CastF32ToBF16(p, p, -1),
		"cast null":       o.CastBF16ToF32(p, 0, 1),
	})
	wantNoErrors(t, map[string]error{
		"add empty":  o.AddInPlace(0, 0, 0),
		"scale zero": o.Scale(0, 1, 0),
		"cast empty": o.CastF32ToBF16(0, 0, 0),
	})
	if SumSquaresScratch(0) != 0 || SumSquaresScratch(1) != 2 || SumSquaresScratch(8192) != 2 || SumSquaresScratch(8193) != 4 {
		t.Error("SumSquaresScratch sizes")
	}
}
