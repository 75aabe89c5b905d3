package moe

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// routerCases covers every router, score function, z-loss, bias and
// capacity policy on E = 4 experts.
func routerCases() []struct {
	spec Spec
	k    int
	bias bool
} {
	z := Options{ZLossCoef: 0.3}
	zs := Options{Score: Sigmoid, ZLossCoef: 0.3}
	return []struct {
		spec Spec
		k    int
		bias bool
	}{
		{Spec{Kind: "topk", Opts: z}, 2, false},
		{Spec{Kind: "topk", Opts: zs}, 2, true},
		{Spec{Kind: "moge", Groups: 2, Opts: z}, 2, false},
		{Spec{Kind: "moge", Groups: 2, Opts: zs}, 2, true},
		{Spec{Kind: "moge", Groups: 4}, 4, false},
		{Spec{Kind: "group_limited", Groups: 2, TopKGroups: 1, Opts: z}, 2, true},
		{Spec{Kind: "group_limited", Groups: 2, TopKGroups: 1, Opts: zs}, 1, false},
		{Spec{Kind: "topk", Opts: Options{CapacityFactor: 0.75}}, 2, false},
		{Spec{Kind: "topk", Opts: Options{CapacityFactor: 0.75, Drop: DropPosition, Score: Sigmoid}}, 2, true},
		{Spec{Kind: "moge", Groups: 2, Opts: Options{CapacityFactor: 0.8, Drop: DropPosition, ZLossCoef: 0.3}}, 2, false},
		{Spec{Kind: "group_limited", Groups: 2, TopKGroups: 2, Opts: Options{CapacityFactor: 0.6, Score: Sigmoid}}, 3, true},
	}
}

type layerFixture struct {
	dm              Dims
	n               int
	x, probe        []float32
	w               Weights
	mask            []bool
	router          Router
	st              State
	sc              Scratch
	out             []float32
	auxCoef, zCoeff float64
}

func newLayerFixture(t *testing.T, spec Spec, k int, bias bool, seed uint64) *layerFixture {
	r := rand.New(rand.NewPCG(seed, 99))
	rnd := func(m int, s float64) []float32 { return normals(r, m, s) }
	f := &layerFixture{dm: Dims{D: 6, H: 10, E: 4, K: k}, n: 9, auxCoef: 0.7}
	router, err := New(spec, f.dm.E, k)
	if err != nil {
		t.Fatal(err)
	}
	f.router, f.zCoeff = router, spec.Opts.ZLossCoef
	f.x = rnd(f.n*f.dm.D, 1)
	f.w = Weights{Router: rnd(f.dm.E*f.dm.D, 0.8), W1: rnd(f.dm.E*f.dm.H*f.dm.D, 0.5), W2: rnd(f.dm.E*f.dm.D*f.dm.H, 0.5)}
	f.probe = rnd(f.n*f.dm.D, 1)
	f.mask = make([]bool, f.n)
	for i := range f.mask {
		f.mask[i] = i != 4
	}
	if bias {
		f.st.Bias = rnd(f.dm.E, 0.3)
	}
	f.st.Resize(f.dm, f.n)
	f.sc.Resize(f.dm, f.n)
	f.out = make([]float32, f.n*f.dm.D)
	return f
}

// loss is Σ probe·out + auxCoef·aux + zCoef·z in float64.
func (f *layerFixture) loss() float64 {
	clear(f.out)
	Forward(f.out, f.x, f.w, f.dm, f.router, f.mask, &f.st)
	s := f.auxCoef*f.st.Aux.Value + f.zCoeff*f.st.ZLoss.Value
	for i := range f.out {
		s += float64(f.probe[i]) * float64(f.out[i])
	}
	return s
}

func gelu64(x float64) float64 { return 0.5 * x * (1 + math.Erf(x/math.Sqrt2)) }

// TestLayerOptionsForwardReference: the layer output equals a float64
// per-token reference Σ over KEPT choices of gate·FFN_e(x), so a dropped slot
// contributes nothing, for every router option.
func TestLayerOptionsForwardReference(t *testing.T) {
	for ci, c := range routerCases() {
		f := newLayerFixture(t, c.spec, c.k, c.bias, uint64(ci))
		f.loss()
		d, h, k := f.dm.D, f.dm.H, f.dm.K
		rt, pl := &f.st.Routing, &f.st.Plan
		for tok := 0; tok < f.n; tok++ {
			want := make([]float64, d)
			for j := 0; j < k; j++ {
				if pl.SlotOf[tok*k+j] < 0 {
					continue
				}
				e := int(rt.Experts[tok*k+j])
				hid := make([]float64, h)
				for a := 0; a < h; a++ {
					for b := 0; b < d; b++ {
						hid[a] += float64(f.w.W1[(e*h+a)*d+b]) * float64(f.x[tok*d+b])
					}
					hid[a] = gelu64(hid[a])
				}
				for b := 0; b < d; b++ {
					var y float64
					for a := 0; a < h; a++ {
						y += float64(f.w.W2[(e*d+b)*h+a]) * hid[a]
					}
					want[b] += float64(rt.Gates[tok*k+j]) * y
				}
			}
			for b := 0; b < d; b++ {
				if got := float64(f.out[tok*d+b]); math.Abs(got-want[b]) > 1e-4*(1+math.Abs(want[b])) {
					t.Fatalf("case %d (%s): out[%d,%d] = %v, reference %v", ci, c.spec.Kind, tok, b, got, want[b])
				}
			}
		}
		if c.spec.Opts.CapacityFactor > 0 && pl.Dropped == 0 {
			t.Errorf("case %d (%s, capacity %g): no slot dropped; the case does not exercise drops", ci, c.spec.Kind, c.spec.Opts.CapacityFactor)
		}
	}
}

// TestLayerOptionsGradCheck checks the MoE layer's backward against central
// finite differences for every router option (scores, z-loss, bias,
// capacity), skipping coordinates where the perturbation changes a routing
// or drop decision.
func TestLayerOptionsGradCheck(t *testing.T) {
	for ci, c := range routerCases() {
		name := fmt.Sprintf("case %d %s/%s z=%g cap=%g/%s bias=%v k=%d", ci, c.spec.Kind, c.spec.Opts.Score, c.spec.Opts.ZLossCoef, c.spec.Opts.CapacityFactor, c.spec.Opts.Drop, c.bias, c.k)
		f := newLayerFixture(t, c.spec, c.k, c.bias, uint64(100+ci))
		f.loss()
		baseEx := slices.Clone(f.st.Routing.Experts)
		baseSlot := slices.Clone(f.st.Plan.SlotOf)
		stable := func() bool {
			return slices.Equal(f.st.Routing.Experts, baseEx) && slices.Equal(f.st.Plan.SlotOf, baseSlot)
		}
		dx := make([]float32, len(f.x))
		dw := zeroWeights(f.w)
		Backward(dx, dw, f.probe, f.x, f.w, f.dm, f.router, f.mask, f.auxCoef, &f.st, &f.sc)
		checkStableGrads(t, name, layerGradPairs(f.x, dx, f.w, dw), func(p []float32, i int) (float64, bool) {
			// Richardson-extrapolated central difference: the O(eps²)
			// truncation error of GELU's curvature cancels.
			old := p[i]
			ok := true
			cd := func(eps float32) float64 {
				p[i] = old + eps
				lp := f.loss()
				ok = ok && stable()
				p[i] = old - eps
				lm := f.loss()
				ok = ok && stable()
				p[i] = old
				return (lp - lm) / (float64(old+eps) - float64(old-eps))
			}
			fd := (4*cd(1e-2) - cd(2e-2)) / 3
			return fd, ok
		})
		f.loss()
	}
}

// TestZLossValue checks z on a hand-computed case: logits (0, ln 3) give
// lse = ln 4 for one token; mask leaves the second token out.
func TestZLossValue(t *testing.T) {
	var z ZLoss
	l3 := float32(math.Log(3))
	z.Forward([]float32{0, l3, 5, 5}, 2, 2, []bool{true, false})
	want := math.Log(4) * math.Log(4)
	if z.Count != 1 || math.Abs(z.Value-want) > 1e-6 {
		t.Fatalf("z = %v over %d tokens, want %v over 1", z.Value, z.Count, want)
	}
}
