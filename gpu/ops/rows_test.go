package ops

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/moe"
	"github.com/moetrain/moetrain/tensor"
)

// rowsBitDiffs counts elements whose bits differ.
func rowsBitDiffs(a, b []float32) int {
	n := 0
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			n++
		}
	}
	return n
}

// rowsDot64 is Σ a·b per row in float64 (the exact reference for RowDot).
func rowsDot64(a, b []float32, n, d int) []float32 {
	out := make([]float32, n)
	for i := 0; i < n; i++ {
		var s float64
		for j := 0; j < d; j++ {
			s += float64(a[i*d+j]) * float64(b[i*d+j])
		}
		out[i] = float32(s)
	}
	return out
}

// rowsCase is a routing and its CPU plan, the inputs of every row kernel.
type rowsCase struct {
	r *moe.Routing
	p *moe.Plan
}

func rowsCases(rng *rand.Rand) []rowsCase {
	var out []rowsCase
	for _, n := range []int{1, 5, 300} {
		for _, ek := range [][2]int{{8, 2}, {16, 8}, {64, 32}} {
			e, k := ek[0], ek[1]
			if k == 32 && n > 5 {
				continue // 32 choices (the combine's limit) on few tokens only
			}
			r := planRandomRouting(rng, n, e, k, planShapeSkewed)
			// Dropless, everything dropped, and some drops.
			for _, capacity := range []int{-1, 0, max(1, n*k/e/2)} {
				p := &moe.Plan{}
				p.BuildCapacity(r, capacity, moe.DropProbability)
				out = append(out, rowsCase{r, p})
			}
		}
	}
	return out
}

var rowsDs = []int{1, 3, 64, 130, 1027}

// rowsEach runs check on every case of rowsCases over every width of
// rowsDs at offsets 0 and 1, drawing the cases and data from one generator.
func rowsEach(t *testing.T, rng *rand.Rand, check func(t *testing.T, o *Ops, rng *rand.Rand, c rowsCase, d, off int)) {
	o := testOps(t)
	for _, c := range rowsCases(rng) {
		for _, d := range rowsDs {
			for _, off := range []int{0, 1} {
				check(t, o, rng, c, d, off)
			}
		}
	}
}

// rowsInputs uploads a case's Plan.Token, Plan.SlotOf[:N·K],
// Routing.Gates[:N·K] and Plan.Gate.
func rowsInputs(t *testing.T, o *Ops, c rowsCase) (tok, slotOf, gates, slotGate cuda.DevicePtr) {
	t.Helper()
	nk := c.r.N * c.r.K
	return upload(t, o, c.p.Token), upload(t, o, c.p.SlotOf[:nk]), upload(t, o, c.r.Gates[:nk]), upload(t, o, c.p.Gate)
}

func TestRowsF32(t *testing.T) {
	rowsEach(t, rand.New(rand.NewPCG(21, 22)), rowsCheckF32)
}

func rowsCheckF32(t *testing.T, o *Ops, rng *rand.Rand, c rowsCase, d, off int) {
	r, p := c.r, c.p
	n, k := r.N, r.K
	nk, s := n*k, p.Slots()
	what := fmt.Sprintf("n=%d e=%d k=%d S=%d d=%d off=%d", n, r.E, k, s, d, off)
	tok, slotOf, gates, slotGate := rowsInputs(t, o, c)

	// Gather: exact.
	x := randn(rng, n*d, 1)
	dst := poisonedAt(t, o, s*d, off)
	if err := o.GatherRows(dst, uploadAt(t, o, x, off), tok, s, d); err != nil {
		t.Fatal(err)
	}
	want := make([]float32, s*d)
	tensor.GatherRows(want, x, p.Token, d)
	if got := download[float32](t, o, dst, s*d); rowsBitDiffs(got, want) != 0 {
		t.Fatalf("%s: GatherRows differs in %d elements", what, rowsBitDiffs(got, want))
	}

	// Combine and its backward: the CPU's order, so equal bit for bit
	// unless Go fuses multiply-adds (GOAMD64=v3); 1e-6 either way.
	y := randn(rng, s*d, 1)
	yDev := uploadAt(t, o, y, off)
	base := randn(rng, n*d, 1)
	for _, withGates := range []bool{true, false} {
		out := uploadAt(t, o, base, off)
		run := func() []float32 {
			var err error
			if withGates {
				err = o.Combine(out, yDev, slotOf, gates, n, k, d)
			} else {
				err = o.CombineBackward(out, yDev, slotOf, n, k, d)
			}
			if err != nil {
				t.Fatal(err)
			}
			return download[float32](t, o, out, n*d)
		}
		got := run()
		want := slices.Clone(base)
		scale := p.Gate
		if !withGates {
			scale = nil
		}
		tensor.ScatterAddRows(want, y, p.Token, scale, d)
		if e := relErr(got, want); e > 1e-6 {
			t.Fatalf("%s gates=%v: Combine rel err %g", what, withGates, e)
		}
		if nd := rowsBitDiffs(got, want); nd != 0 {
			t.Logf("%s gates=%v: Combine within tolerance but %d elements differ in bits", what, withGates, nd)
		}
		for tk := 0; tk < n; tk++ { // tokens with every choice dropped are untouched
			if slices.Max(p.SlotOf[tk*k:(tk+1)*k]) < 0 && rowsBitDiffs(got[tk*d:(tk+1)*d], base[tk*d:(tk+1)*d]) != 0 {
				t.Fatalf("%s: token %d has no kept slot but its row changed", what, tk)
			}
		}
		if err := cuda.CopyIn(o.C, out, base); err != nil {
			t.Fatal(err)
		}
		if again := run(); rowsBitDiffs(again, got) != 0 {
			t.Fatalf("%s gates=%v: Combine not deterministic", what, withGates)
		}
	}

	// CombineOnto: Combine on a copy of the residual, bit for bit; every
	// row written, the residual untouched.
	{
		res := uploadAt(t, o, base, off)
		onto := poisonedAt(t, o, n*d, off)
		if err := o.CombineOnto(onto, res, yDev, slotOf, gates, n, k, d); err != nil {
			t.Fatal(err)
		}
		ref := uploadAt(t, o, base, off)
		if err := o.Combine(ref, yDev, slotOf, gates, n, k, d); err != nil {
			t.Fatal(err)
		}
		if nd := rowsBitDiffs(download[float32](t, o, onto, n*d), download[float32](t, o, ref, n*d)); nd != 0 {
			t.Fatalf("%s: CombineOnto differs from Combine in %d elements", what, nd)
		}
		if nd := rowsBitDiffs(download[float32](t, o, res, n*d), base); nd != 0 {
			t.Fatalf("%s: CombineOnto changed its residual in %d elements", what, nd)
		}
	}

	// RowDot: a different summation order than tensor.RowDot's four
	// running sums, so compared with the float64 dot at 1e-6.
	a := randn(rng, s*d, 1)
	dot := poisonedAt(t, o, s, 0)
	if err := o.RowDot(dot, uploadAt(t, o, a, off), yDev, s, d); err != nil {
		t.Fatal(err)
	}
	got := download[float32](t, o, dot, s)
	if e := relErr(got, rowsDot64(a, y, s, d)); e > 1e-6 {
		t.Fatalf("%s: RowDot rel err %g against float64", what, e)
	}
	// Against the CPU kernel: both are float32 sums in different orders, and
	// with one or two rows cancellation can leave either 1e-6 off, so the
	// forward tolerance of every kernel (1e-5) applies.
	wantDot := make([]float32, s)
	tensor.RowDot(wantDot, a, y, s, d)
	if e := relErr(got, wantDot); e > 1e-5 {
		t.Fatalf("%s: RowDot rel err %g against tensor.RowDot", what, e)
	}

	// ScaleRows: one rounding per element, exact.
	z := randn(rng, s*d, 1)
	zDev := uploadAt(t, o, z, off)
	if err := o.ScaleRows(zDev, slotGate, s, d); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < s; i++ {
		for j := 0; j < d; j++ {
			z[i*d+j] *= p.Gate[i]
		}
	}
	if gotZ := download[float32](t, o, zDev, s*d); rowsBitDiffs(gotZ, z) != 0 {
		t.Fatalf("%s: ScaleRows differs in %d elements", what, rowsBitDiffs(gotZ, z))
	}

	// Slot gradients back to the choices: exact, every element written.
	dslot := randn(rng, s, 1)
	dg := poisonedAt(t, o, nk, 0)
	if err := o.SlotGradsToChoices(dg, upload(t, o, dslot), slotOf, nk); err != nil {
		t.Fatal(err)
	}
	wantG := make([]float32, nk)
	for i, sl := range p.SlotOf[:nk] {
		if sl >= 0 {
			wantG[i] = dslot[sl]
		}
	}
	if gotG := download[float32](t, o, dg, nk); rowsBitDiffs(gotG, wantG) != 0 {
		t.Fatalf("%s: SlotGradsToChoices differs in %d elements", what, rowsBitDiffs(gotG, wantG))
	}
}

func TestRowsBF16(t *testing.T) {
	rowsEach(t, rand.New(rand.NewPCG(31, 32)), rowsCheckBF16)
}

func rowsCheckBF16(t *testing.T, o *Ops, rng *rand.Rand, c rowsCase, d, off int) {
	r, p := c.r, c.p
	n, k := r.N, r.K
	s := p.Slots()
	what := fmt.Sprintf("bf16 n=%d e=%d k=%d S=%d d=%d off=%d", n, r.E, k, s, d, off)
	tok, slotOf, gates, slotGate := rowsInputs(t, o, c)

	x := bf16Encode(randn(rng, n*d, 1))
	dst := poisonedBF16At(t, o, s*d, off)
	if err := o.GatherRowsBF16(dst, uploadAt(t, o, x, off), tok, s, d); err != nil {
		t.Fatal(err)
	}
	got := download[uint16](t, o, dst, s*d)
	for i, tk := range p.Token {
		if !slices.Equal(got[i*d:(i+1)*d], x[int(tk)*d:int(tk+1)*d]) {
			t.Fatalf("%s: GatherRowsBF16 row %d differs", what, i)
		}
	}

	// Combine: float32 sums of the widened rows in the CPU's order, rounded
	// to bfloat16 once.
	y := bf16Encode(randn(rng, s*d, 1))
	yDev := uploadAt(t, o, y, off)
	base := bf16Encode(randn(rng, n*d, 1))
	for _, withGates := range []bool{true, false} {
		out := uploadAt(t, o, base, off)
		var err error
		scale := p.Gate
		if withGates {
			err = o.CombineBF16(out, yDev, slotOf, gates, n, k, d)
		} else {
			err = o.CombineBackwardBF16(out, yDev, slotOf, n, k, d)
			scale = nil
		}
		if err != nil {
			t.Fatal(err)
		}
		want := bf16Decode(base)
		tensor.ScatterAddRows(want, bf16Decode(y), p.Token, scale, d)
		want = bf16Decode(bf16Encode(want))
		gotF := bf16Decode(download[uint16](t, o, out, n*d))
		if e := relErr(gotF, want); e > 1e-6 {
			t.Fatalf("%s gates=%v: CombineBF16 rel err %g", what, withGates, e)
		}
	}

	a := bf16Encode(randn(rng, s*d, 1))
	dot := poisonedAt(t, o, s, 0)
	if err := o.RowDotBF16(dot, uploadAt(t, o, a, off), yDev, s, d); err != nil {
		t.Fatal(err)
	}
	if e := relErr(download[float32](t, o, dot, s), rowsDot64(bf16Decode(a), bf16Decode(y), s, d)); e > 1e-6 {
		t.Fatalf("%s: RowDotBF16 rel err %g", what, e)
	}

	z := bf16Encode(randn(rng, s*d, 1))
	zDev := uploadAt(t, o, z, off)
	if err := o.ScaleRowsBF16(zDev, slotGate, s, d); err != nil {
		t.Fatal(err)
	}
	gotZ := download[uint16](t, o, zDev, s*d)
	for i := 0; i < s; i++ {
		for j := 0; j < d; j++ {
			if w := bf16Bits(bf16Value(z[i*d+j]) * p.Gate[i]); gotZ[i*d+j] != w {
				t.Fatalf("%s: ScaleRowsBF16[%d,%d] = %#04x, want %#04x", what, i, j, gotZ[i*d+j], w)
			}
		}
	}

	// GatherDotScaleBF16: fp32 source and expert outputs; the dot against
	// the float64 reference, the scaled rows bitwise (one float32 product,
	// one rounding).
	src := randn(rng, n*d, 1)
	yf := randn(rng, s*d, 1)
	dst16 := poisonedBF16At(t, o, s*d, off)
	dot2 := poisonedAt(t, o, s, 0)
	if err := o.GatherDotScaleBF16(dst16, dot2, uploadAt(t, o, src, off), tok, uploadAt(t, o, yf, off), slotGate, s, d); err != nil {
		t.Fatal(err)
	}
	gathered := make([]float32, s*d)
	tensor.GatherRows(gathered, src, p.Token, d)
	if e := relErr(download[float32](t, o, dot2, s), rowsDot64(gathered, yf, s, d)); e > 1e-5 {
		t.Fatalf("%s: GatherDotScaleBF16 dot rel err %g", what, e)
	}
	got16 := download[uint16](t, o, dst16, s*d)
	for i := 0; i < s; i++ {
		for j := 0; j < d; j++ {
			if w := bf16Bits(gathered[i*d+j] * p.Gate[i]); got16[i*d+j] != w {
				t.Fatalf("%s: GatherDotScaleBF16[%d,%d] = %#04x, want %#04x", what, i, j, got16[i*d+j], w)
			}
		}
	}
}

// TestRowsLargeRows: rows wider than a warp's 32 vectors and many tokens
// (grid-stride loops over rows and columns).
func TestRowsLargeRows(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(41, 42))
	r := planRandomRouting(rng, 20000, 64, 8, planShapeUniform)
	p := &moe.Plan{}
	p.BuildCapacity(r, moe.Options{CapacityFactor: 1.25}.Capacity(r.N, r.E, r.K), moe.DropPosition)
	rowsCheckF32(t, o, rng, rowsCase{r, p}, 256, 0)
	r2 := planRandomRouting(rng, 64, 8, 2, planShapeUniform)
	p2 := &moe.Plan{}
	p2.Build(r2)
	rowsCheckF32(t, o, rng, rowsCase{r2, p2}, 4096+4, 0)
}

// TestRowsBadArgs needs no GPU: arguments are checked before any launch,
// and empty work launches nothing.
func TestRowsBadArgs(t *testing.T) {
	o := &Ops{}
	wantErrors(t, map[string]error{
		"gather rows<0":    o.GatherRows(1, 1, 1, -1, 4),
		"gather d<0":       o.GatherRowsBF16(1, 1, 1, 4, -1),
		"gather nil":       o.GatherRows(0, 1, 1, 4, 4),
		"combine k=0":      o.Combine(1, 1, 1, 1, 4, 0, 4),
		"combine k=33":     o.Combine(1, 1, 1, 1, 4, 33, 4),
		"combine no gates": o.Combine(1, 1, 1, 0, 4, 2, 4),
		"combine nil out":  o.CombineBF16(0, 1, 1, 1, 4, 2, 4),
		"backward k=33":    o.CombineBackward(1, 1, 1, 4, 33, 4),
		"backward n<0":     o.CombineBackwardBF16(1, 1, 1, -4, 2, 4),
		"dot n<0":          o.RowDot(1, 1, 1, -1, 4),
		"dot nil":          o.RowDotBF16(1, 0, 1, 4, 4),
		"scale nil gate":   o.ScaleRows(1, 0, 4, 4),
		"scale d<0":        o.ScaleRowsBF16(1, 1, 4, -1),
		"dgates nk<0":      o.SlotGradsToChoices(1, 1, 1, -1),
		"dgates nil":       o.SlotGradsToChoices(1, 1, 0, 4),
	})
	wantNoErrors(t, map[string]error{
		"gather empty":  o.GatherRows(0, 0, 0, 0, 4),
		"combine empty": o.Combine(0, 0, 0, 1, 0, 2, 4),
		"dot empty":     o.RowDot(0, 0, 0, 0, 4),
		"scale empty":   o.ScaleRows(0, 0, 4, 0),
		"dgates empty":  o.SlotGradsToChoices(0, 0, 0, 0),
	})
}
