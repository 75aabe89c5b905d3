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

// routerCPUScores is moe's scoreForward (unexported there).
func routerCPUScores(probs, logits []float32, n, e int, s moe.Score) {
	if s == moe.Softmax {
		tensor.SoftmaxForward(probs, logits, n, e)
		return
	}
	for i, v := range logits[:n*e] {
		probs[i] = float32(1 / (1 + math.Exp(-float64(v))))
	}
}

// routerCPUScoresBackward is moe's scoreBackward.
func routerCPUScoresBackward(dlogits, dprobs, probs []float32, n, e int, s moe.Score) {
	if s == moe.Softmax {
		tensor.SoftmaxBackward(dlogits, dprobs, probs, n, e)
		return
	}
	for i, p := range probs[:n*e] {
		dlogits[i] += dprobs[i] * p * (1 - p)
	}
}

// routerQuantise rounds scores up to the next multiple of 1/16 (never 0, so
// gates stay finite): many exact ties, within and across groups.
func routerQuantise(p []float32) []float32 {
	q := make([]float32, len(p))
	for i, v := range p {
		q[i] = float32((math.Floor(float64(v)*16) + 1) / 16)
	}
	return q
}

// routerBias is a balancing bias of multiples of 1/16 in [-1/4, 1/4], so
// that quantised score + bias keys tie exactly too.
func routerBias(rng *rand.Rand, e int) []float32 {
	b := make([]float32, e)
	for i := range b {
		b[i] = float32(rng.IntN(9)-4) / 16
	}
	return b
}

func routerDivisors(x int) []int {
	var d []int
	for g := 1; g <= x; g++ {
		if x%g == 0 {
			d = append(d, g)
		}
	}
	return d
}

// routerSpecs lists every router valid for e experts and top-k: topk, moge
// for every groups dividing e and k, group_limited for every groups
// dividing e with a few topk_groups each (1, 2, half, all but one, all).
func routerSpecs(e, k int) []moe.Spec {
	out := []moe.Spec{{Kind: "topk"}}
	for _, g := range routerDivisors(e) {
		if k%g == 0 {
			out = append(out, moe.Spec{Kind: "moge", Groups: g})
		}
		var seen []int
		for _, tg := range []int{1, 2, g / 2, g - 1, g} {
			if tg < 1 || tg > g || slices.Contains(seen, tg) || k > tg*(e/g) {
				continue
			}
			seen = append(seen, tg)
			out = append(out, moe.Spec{Kind: "group_limited", Groups: g, TopKGroups: tg})
		}
	}
	return out
}

func routerSpecName(s moe.Spec) string {
	return fmt.Sprintf("%s(groups=%d,topk_groups=%d)", s.Kind, s.Groups, s.TopKGroups)
}

// routerPoison64 allocates n float64 filled with NaN (all bits set).
func routerPoison64(t testing.TB, o *Ops, n int) cuda.DevicePtr {
	t.Helper()
	p := devAlloc(t, o, max(1, n)*8)
	if err := o.C.Fill32(o.S, p, 2*max(1, n), 0xffffffff); err != nil {
		t.Fatal(err)
	}
	return p
}

// routerFill32 sets n 32-bit words at p to bits.
func routerFill32(t testing.TB, o *Ops, p cuda.DevicePtr, n int, bits uint32) {
	t.Helper()
	if err := o.C.Fill32(o.S, p, n, bits); err != nil {
		t.Fatal(err)
	}
}

// routerUploadMask uploads mask as bytes (0 for nil: every token counts).
func routerUploadMask(t testing.TB, o *Ops, mask []bool) cuda.DevicePtr {
	t.Helper()
	if mask == nil {
		return 0
	}
	return upload(t, o, mask)
}

// routerMasks are the mask cases for n tokens: none, about 70% counted,
// none counted.
func routerMasks(rng *rand.Rand, n int) map[string][]bool {
	some := make([]bool, n)
	for i := range some {
		some[i] = rng.IntN(10) < 7
	}
	return map[string][]bool{"all": nil, "some": some, "none": make([]bool, n)}
}

// routerCoef is the loss coefficient of the aux and z-loss backward tests.
const routerCoef = 0.01

// routerShapes runs f as a subtest for each shape of the aux and z-loss
// tests: n tokens from one to 20000 (up to 128 blocks of partial sums), e
// experts from one to 256.
func routerShapes(t *testing.T, f func(t *testing.T, n, e int)) {
	for _, n := range []int{1, 7, 300, 1000, 20000} {
		for _, e := range []int{1, 2, 8, 16, 60, 64, 256} {
			t.Run(fmt.Sprintf("n=%d,e=%d", n, e), func(t *testing.T) { f(t, n, e) })
		}
	}
}

// routerNear64 reports |got − want| <= tol·max(1, |want|) (NaN never near).
// routerRelErrNaN is relErr over the elements where want is not NaN,
// +Inf if got is NaN exactly where want is not or the reverse (a row of −Inf
// logits has a NaN lse and gradient on both sides).
func routerRelErrNaN(got, want []float32) float64 {
	g, w := make([]float32, 0, len(got)), make([]float32, 0, len(want))
	for i := range want {
		gn, wn := math.IsNaN(float64(got[i])), math.IsNaN(float64(want[i]))
		if gn != wn {
			return math.Inf(1)
		}
		if !wn {
			g, w = append(g, got[i]), append(w, want[i])
		}
	}
	return relErr(g, w)
}

// routerNear64 accepts got within tol of want (relative above 1), or both
// NaN (a row of −Inf logits has a NaN lse on both sides).
func routerNear64(got, want, tol float64) bool {
	if math.IsNaN(want) {
		return math.IsNaN(got)
	}
	return math.Abs(got-want) <= tol*max(1, math.Abs(want))
}

// routerGateNear accepts got within tol relative of want, or both NaN.
func routerGateNear(got, want float32, tol float64) bool {
	if math.IsNaN(float64(want)) {
		return math.IsNaN(float64(got))
	}
	return math.Abs(float64(got)-float64(want)) <= tol*math.Abs(float64(want))
}

// routerErrs stops a test after a few reported mismatches.
type routerErrs struct {
	t *testing.T
	n int
}

func (r *routerErrs) errorf(format string, args ...any) {
	r.t.Helper()
	r.t.Errorf(format, args...)
	if r.n++; r.n >= 10 {
		r.t.FailNow()
	}
}

// TestRouterScores: softmax and sigmoid scores and their backward against
// moe's, with a row of -Inf logits (zeros under softmax) and extreme logits.
func TestRouterScores(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(1, 7))
	for _, n := range []int{1, 7, 300, 1000} {
		for _, e := range []int{1, 2, 8, 16, 60, 64, 256} {
			for _, score := range []moe.Score{moe.Softmax, moe.Sigmoid} {
				name := fmt.Sprintf("n=%d e=%d %s", n, e, score)
				logits := randn(rng, n*e, 3)
				if n >= 7 {
					for i := 3 * e; i < 4*e; i++ {
						logits[i] = float32(math.Inf(-1))
					}
					logits[5*e] = 90
					logits[5*e+e-1] = -90
				}
				dl := upload(t, o, logits)
				dp := poisoned(t, o, n*e)
				if err := o.RouterScores(dp, dl, n, e, score); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				got := download[float32](t, o, dp, n*e)
				want := make([]float32, n*e)
				routerCPUScores(want, logits, n, e, score)
				if r := relErr(got, want); r > 1e-6 {
					t.Errorf("%s: probs rel err %g", name, r)
				}
				for i := range got {
					if !(math.Abs(float64(got[i]-want[i])) <= 5e-6*math.Abs(float64(want[i]))+1e-30) {
						t.Errorf("%s: probs[%d] = %g, want %g", name, i, got[i], want[i])
						break
					}
				}
				// Backward against the CPU run on the GPU's probs.
				dprobs := randn(rng, n*e, 1)
				base := randn(rng, n*e, 1)
				dd := upload(t, o, base)
				if err := o.RouterScoresBackward(dd, upload(t, o, dprobs), dp, n, e, score); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				wantD := slices.Clone(base)
				routerCPUScoresBackward(wantD, dprobs, got, n, e, score)
				if r := relErr(download[float32](t, o, dd, n*e), wantD); r > 1e-5 {
					t.Errorf("%s: dlogits rel err %g", name, r)
				}
			}
		}
	}
}

// routerVariant is one set of router scores the selection runs on.
type routerVariant struct {
	name  string
	probs []float32
	dev   cuda.DevicePtr
	nan   bool // has NaN scores: no backward check
}

// TestRouterSelect: for every router valid for each shape (every groups,
// several topk_groups), with and without bias, on GPU softmax and sigmoid
// scores, on quantised ones (exact ties) and on quantised ones with NaNs,
// RouterSelect's experts equal moe's Select exactly (order included), its
// gates are within 1e-6 relative (in fact equal), every output is written,
// and RouterBackward matches the router's Backward within 1e-5.
func TestRouterSelect(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(3, 4))
	type shape struct {
		n, e int
		ks   []int
	}
	var shapes []shape
	for _, n := range []int{1, 7, 300, 1000} {
		for _, e := range []int{1, 2, 8, 16, 60, 64} {
			var ks []int
			for k := 1; k <= min(e, 8); k++ {
				ks = append(ks, k)
			}
			shapes = append(shapes, shape{n, e, ks})
		}
	}
	// The limits: 256 experts (up to 256 groups), top-16.
	shapes = append(shapes, shape{300, 256, []int{1, 2, 3, 8, 16}}, shape{77, 32, []int{12, 16}})
	for _, sh := range shapes {
		t.Run(fmt.Sprintf("n=%d,e=%d", sh.n, sh.e), func(t *testing.T) {
			routerSelectShape(t, o, rng, sh.n, sh.e, sh.ks)
		})
	}
}

func routerSelectShape(t *testing.T, o *Ops, rng *rand.Rand, n, e int, ks []int) {
	kmax := slices.Max(ks)
	errs := &routerErrs{t: t}
	logits := randn(rng, n*e, 2)
	dl := upload(t, o, logits)
	var vs []routerVariant
	for _, score := range []moe.Score{moe.Softmax, moe.Sigmoid} {
		dp := poisoned(t, o, n*e)
		if err := o.RouterScores(dp, dl, n, e, score); err != nil {
			t.Fatal(err)
		}
		p := download[float32](t, o, dp, n*e)
		q := routerQuantise(p)
		vs = append(vs, routerVariant{name: score.String(), probs: p, dev: dp},
			routerVariant{name: score.String() + "/quantised", probs: q, dev: upload(t, o, q)})
	}
	qn := routerQuantise(vs[0].probs)
	for i := range qn {
		if rng.IntN(30) == 0 {
			qn[i] = float32(math.NaN())
		}
	}
	vs = append(vs, routerVariant{name: "softmax/quantised/nan", probs: qn, dev: upload(t, o, qn), nan: true})
	bias := routerBias(rng, e)
	dBias := upload(t, o, bias)
	dEx := devAlloc(t, o, n*kmax*4)
	dG := devAlloc(t, o, n*kmax*4)
	dgates := randn(rng, n*kmax, 1)
	dDg := upload(t, o, dgates)
	base := randn(rng, n*e, 1)
	dDp := devAlloc(t, o, n*e*4)
	for _, v := range vs {
		for _, k := range ks {
			for _, spec := range routerSpecs(e, k) {
				router, err := moe.New(spec, e, k)
				if err != nil {
					t.Fatalf("%s: %v", routerSpecName(spec), err)
				}
				gs, err := RouterSpecOf(router)
				if err != nil {
					t.Fatal(err)
				}
				for _, biased := range []bool{false, true} {
					name := fmt.Sprintf("%s k=%d %s bias=%v", v.name, k, routerSpecName(spec), biased)
					r := moe.Routing{N: n, E: e, K: k, Probs: v.probs, Experts: make([]int32, n*k), Gates: make([]float32, n*k)}
					bp := cuda.DevicePtr(0)
					if biased {
						r.Bias, bp = bias, dBias
					}
					router.Select(&r)
					routerFill32(t, o, dEx, n*k, 0xffffffff)
					routerFill32(t, o, dG, n*k, 0x7fc00000)
					if err := o.RouterSelect(dEx, dG, v.dev, bp, n, e, k, gs); err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					ex := download[int32](t, o, dEx, n*k)
					g := download[float32](t, o, dG, n*k)
					ok := true
					for i := range ex {
						if ex[i] != r.Experts[i] {
							tok := i / k
							errs.errorf("%s: token %d: experts %v, want %v (scores %v)", name, tok, ex[tok*k:(tok+1)*k], r.Experts[tok*k:(tok+1)*k], v.probs[tok*e:(tok+1)*e])
							ok = false
							break
						}
					}
					for i := range g {
						if ok && !routerGateNear(g[i], r.Gates[i], 1e-6) {
							errs.errorf("%s: gates[%d] = %v, want %v", name, i, g[i], r.Gates[i])
							ok = false
						}
					}
					if !ok || v.nan {
						continue
					}
					if err := cuda.CopyIn(o.C, dDp, base); err != nil {
						t.Fatal(err)
					}
					if err := o.RouterBackward(dDp, dDg, v.dev, dEx, dG, n, e, k, gs); err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					want := slices.Clone(base)
					router.Backward(want, dgates[:n*k], &r)
					if re := relErr(download[float32](t, o, dDp, n*e), want); re > 1e-5 {
						errs.errorf("%s: backward rel err %g", name, re)
					}
				}
			}
		}
	}
}

// TestRouterAux: the aux statistics, Finish and backward against moe.Aux
// and moe.AuxBackward, with no mask, a partial mask and an all-false mask
// (Count 0: zero loss, no gradient), over shapes spanning one to 128 blocks
// of partial sums; and Finish of statistics summed over two "ranks"
// (halves of the batch), as a deferred-stats layout would.
func TestRouterAux(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(5, 6))
	routerShapes(t, func(t *testing.T, n, e int) {
		ks := slices.Compact([]int{1, min(e, 8), min(e, 16)})
		for _, k := range ks {
			logits := randn(rng, n*e, 2)
			r := moe.Routing{N: n, E: e, K: k, Probs: make([]float32, n*e), Experts: make([]int32, n*k), Gates: make([]float32, n*k)}
			tensor.SoftmaxForward(r.Probs, logits, n, e)
			moe.TopK{}.Select(&r)
			dProbs := upload(t, o, r.Probs)
			dEx := upload(t, o, r.Experts)
			scratch := devAlloc(t, o, max(1, RouterAuxScratchBytes(n, e)))
			masks := routerMasks(rng, n)
			for _, mname := range []string{"all", "some", "none"} {
				mask := masks[mname]
				name := fmt.Sprintf("n=%d e=%d k=%d mask=%s", n, e, k, mname)
				dm := routerUploadMask(t, o, mask)
				stats := routerPoison64(t, o, 2*e+1)
				if err := o.RouterAuxStats(stats, scratch, dProbs, dEx, dm, n, e, k); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				var a moe.Aux
				a.Accumulate(&r, mask)
				got := download[float64](t, o, stats, 2*e+1)
				for i := 0; i < e; i++ {
					if got[i] != a.SlotSum[i] || !routerNear64(got[e+i], a.ProbSum[i], 1e-9) {
						t.Fatalf("%s: expert %d: slots %v, prob sum %v; want %v, %v", name, i, got[i], got[e+i], a.SlotSum[i], a.ProbSum[i])
					}
				}
				if got[2*e] != float64(a.Count) {
					t.Fatalf("%s: count %v, want %d", name, got[2*e], a.Count)
				}
				fin := routerPoison64(t, o, 2*e+2)
				if err := o.RouterAuxFinish(fin, stats, e, k); err != nil {
					t.Fatal(err)
				}
				a.Finish(k)
				f := download[float64](t, o, fin, 2*e+2)
				for i := 0; i < e; i++ {
					if !routerNear64(f[i], a.F[i], 1e-12) || !routerNear64(f[e+i], a.P[i], 1e-9) {
						t.Fatalf("%s: expert %d: F %v, P %v; want %v, %v", name, i, f[i], f[e+i], a.F[i], a.P[i])
					}
				}
				if !routerNear64(f[2*e], a.Value, 1e-9) || f[2*e+1] != float64(a.Count) {
					t.Fatalf("%s: value %v count %v, want %v, %d", name, f[2*e], f[2*e+1], a.Value, a.Count)
				}
				base := randn(rng, n*e, 1)
				dd := upload(t, o, base)
				if err := o.RouterAuxBackward(dd, fin, dm, n, e, routerCoef); err != nil {
					t.Fatal(err)
				}
				want := slices.Clone(base)
				moe.AuxBackward(want, &a, &r, mask, routerCoef)
				gotD := download[float32](t, o, dd, n*e)
				if re := relErr(gotD, want); re > 1e-6 {
					t.Errorf("%s: aux backward rel err %g", name, re)
				}
				if a.Count == 0 && !slices.Equal(gotD, base) {
					t.Errorf("%s: aux backward changed dprobs without counted tokens", name)
				}
			}
			if n < 2 {
				continue
			}
			// Two ranks' statistics, summed as an all-reduce would, then Finish.
			h := n / 2
			mask := masks["some"]
			dm := routerUploadMask(t, o, mask)
			s0, s1 := routerPoison64(t, o, 2*e+1), routerPoison64(t, o, 2*e+1)
			if err := o.RouterAuxStats(s0, scratch, dProbs, dEx, dm, h, e, k); err != nil {
				t.Fatal(err)
			}
			if err := o.RouterAuxStats(s1, scratch, dProbs.Add(h*e*4), dEx.Add(h*k*4), dm.Add(h), n-h, e, k); err != nil {
				t.Fatal(err)
			}
			sum := download[float64](t, o, s0, 2*e+1)
			for i, v := range download[float64](t, o, s1, 2*e+1) {
				sum[i] += v
			}
			if err := cuda.CopyIn(o.C, s0, sum); err != nil {
				t.Fatal(err)
			}
			fin := routerPoison64(t, o, 2*e+2)
			if err := o.RouterAuxFinish(fin, s0, e, k); err != nil {
				t.Fatal(err)
			}
			var a moe.Aux
			moe.ComputeAux(&a, &r, mask)
			if f := download[float64](t, o, fin, 2*e+2); !routerNear64(f[2*e], a.Value, 1e-9) || f[2*e+1] != float64(a.Count) {
				t.Fatalf("n=%d e=%d k=%d: two-rank value %v count %v, want %v, %d", n, e, k, f[2*e], f[2*e+1], a.Value, a.Count)
			}
		}
	})
	// No tokens: zero statistics.
	stats := routerPoison64(t, o, 2*8+1)
	if err := o.RouterAuxStats(stats, 0, 0, 0, 0, 0, 8, 2); err != nil {
		t.Fatal(err)
	}
	for i, v := range download[float64](t, o, stats, 2*8+1) {
		if v != 0 {
			t.Fatalf("n=0: stats[%d] = %v", i, v)
		}
	}
}

// TestRouterZLoss: lse, Sum, Count and Value against moe.ZLoss (float64),
// its backward, the three mask cases, and Finish after an all-reduce.
func TestRouterZLoss(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(8, 9))
	routerShapes(t, func(t *testing.T, n, e int) {
		logits := randn(rng, n*e, 3)
		if n >= 7 {
			logits[2*e] = 60
			logits[4*e] = float32(math.Inf(-1))
		}
		dl := upload(t, o, logits)
		scratch := devAlloc(t, o, max(1, RouterZLossScratchBytes(n)))
		masks := routerMasks(rng, n)
		for _, mname := range []string{"all", "some", "none"} {
			mask := masks[mname]
			name := fmt.Sprintf("n=%d e=%d mask=%s", n, e, mname)
			dm := routerUploadMask(t, o, mask)
			lse, z := routerPoison64(t, o, n), routerPoison64(t, o, 3)
			if err := o.RouterZLoss(lse, z, scratch, dl, dm, n, e); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			var zl moe.ZLoss
			zl.Forward(logits, n, e, mask)
			gotL := download[float64](t, o, lse, n)
			for i := range gotL {
				if !routerNear64(gotL[i], zl.LSE[i], 1e-9) {
					t.Fatalf("%s: lse[%d] = %v, want %v", name, i, gotL[i], zl.LSE[i])
				}
			}
			gz := download[float64](t, o, z, 3)
			if !routerNear64(gz[0], zl.Sum, 1e-9) || gz[1] != float64(zl.Count) || !routerNear64(gz[2], zl.Value, 1e-9) {
				t.Fatalf("%s: z = %v, want sum %v count %d value %v", name, gz, zl.Sum, zl.Count, zl.Value)
			}
			base := randn(rng, n*e, 1)
			dd := upload(t, o, base)
			if err := o.RouterZLossBackward(dd, dl, lse, z, dm, n, e, routerCoef); err != nil {
				t.Fatal(err)
			}
			want := slices.Clone(base)
			zl.Backward(want, logits, n, e, mask, routerCoef)
			gotD := download[float32](t, o, dd, n*e)
			if re := routerRelErrNaN(gotD, want); re > 1e-5 {
				t.Errorf("%s: z-loss backward rel err %g", name, re)
			}
			if zl.Count == 0 && !slices.Equal(gotD, base) {
				t.Errorf("%s: z-loss backward changed dlogits without counted tokens", name)
			}
		}
	})
	// Finish after a caller summed Sum and Count over ranks.
	z := upload(t, o, []float64{6, 4, math.NaN()})
	if err := o.RouterZLossFinish(z); err != nil {
		t.Fatal(err)
	}
	if got := download[float64](t, o, z, 3); got[2] != 1.5 {
		t.Fatalf("finish: value %v, want 1.5", got[2])
	}
	z0 := upload(t, o, []float64{0, 0, math.NaN()})
	if err := o.RouterZLossFinish(z0); err != nil {
		t.Fatal(err)
	}
	if got := download[float64](t, o, z0, 3); got[2] != 0 {
		t.Fatalf("finish without tokens: value %v, want 0", got[2])
	}
	// No tokens: zeros.
	zz := routerPoison64(t, o, 3)
	if err := o.RouterZLoss(0, zz, 0, 0, 0, 0, 8); err != nil {
		t.Fatal(err)
	}
	if got := download[float64](t, o, zz, 3); got[0] != 0 || got[1] != 0 || got[2] != 0 {
		t.Fatalf("n=0: z = %v", got)
	}
}

func routerBits32(x []float32) []uint32 {
	out := make([]uint32, len(x))
	for i, v := range x {
		out[i] = math.Float32bits(v)
	}
	return out
}

func routerBits64(x []float64) []uint64 {
	out := make([]uint64, len(x))
	for i, v := range x {
		out[i] = math.Float64bits(v)
	}
	return out
}

// TestRouterDeterministic: at the production shape (16384 tokens, 64
// experts, top-8, bias set, a partial mask) two runs of the whole router
// forward and backward give the same bits, and the experts equal the CPU's.
func TestRouterDeterministic(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(10, 11))
	const n, e, k = 16384, 64, 8
	logits := randn(rng, n*e, 2)
	bias := randn(rng, e, 0.05)
	mask := routerMasks(rng, n)["some"]
	dl, db, dm := upload(t, o, logits), upload(t, o, bias), routerUploadMask(t, o, mask)
	dgates := upload(t, o, randn(rng, n*k, 1))
	for _, spec := range []moe.Spec{{Kind: "topk"}, {Kind: "moge", Groups: 8}, {Kind: "group_limited", Groups: 8, TopKGroups: 4}} {
		router, err := moe.New(spec, e, k)
		if err != nil {
			t.Fatal(err)
		}
		rs, err := RouterSpecOf(router)
		if err != nil {
			t.Fatal(err)
		}
		for _, score := range []moe.Score{moe.Softmax, moe.Sigmoid} {
			name := fmt.Sprintf("%s %s", routerSpecName(spec), score)
			var runs [2][]uint64
			var ex []int32
			var probs []float32
			for run := range runs {
				probsD, dEx, dG := devAlloc(t, o, n*e*4), devAlloc(t, o, n*k*4), devAlloc(t, o, n*k*4)
				stats, fin := routerPoison64(t, o, 2*e+1), routerPoison64(t, o, 2*e+2)
				lse, z := routerPoison64(t, o, n), routerPoison64(t, o, 3)
				dp, dlog := devAlloc(t, o, n*e*4), devAlloc(t, o, n*e*4)
				must := func(err error) {
					t.Helper()
					if err != nil {
						t.Fatalf("%s: %v", name, err)
					}
				}
				must(o.RouterScores(probsD, dl, n, e, score))
				must(o.RouterSelect(dEx, dG, probsD, db, n, e, k, rs))
				must(o.RouterAuxStats(stats, devAlloc(t, o, RouterAuxScratchBytes(n, e)), probsD, dEx, dm, n, e, k))
				must(o.RouterAuxFinish(fin, stats, e, k))
				must(o.RouterZLoss(lse, z, devAlloc(t, o, RouterZLossScratchBytes(n)), dl, dm, n, e))
				must(o.C.Zero(o.S, dp, n*e*4))
				must(o.C.Zero(o.S, dlog, n*e*4))
				must(o.RouterBackward(dp, dgates, probsD, dEx, dG, n, e, k, rs))
				must(o.RouterAuxBackward(dp, fin, dm, n, e, 0.01))
				must(o.RouterScoresBackward(dlog, dp, probsD, n, e, score))
				must(o.RouterZLossBackward(dlog, dl, lse, z, dm, n, e, 1e-3))
				ex = download[int32](t, o, dEx, n*k)
				probs = download[float32](t, o, probsD, n*e)
				var bits []uint64
				for _, x := range ex {
					bits = append(bits, uint64(uint32(x)))
				}
				for _, b := range routerBits32(probs) {
					bits = append(bits, uint64(b))
				}
				for _, b := range routerBits32(download[float32](t, o, dG, n*k)) {
					bits = append(bits, uint64(b))
				}
				for _, p := range []cuda.DevicePtr{dp, dlog} {
					for _, b := range routerBits32(download[float32](t, o, p, n*e)) {
						bits = append(bits, uint64(b))
					}
				}
				bits = append(bits, routerBits64(download[float64](t, o, fin, 2*e+2))...)
				bits = append(bits, routerBits64(download[float64](t, o, z, 3))...)
				bits = append(bits, routerBits64(download[float64](t, o, lse, n))...)
				runs[run] = bits
			}
			if !slices.Equal(runs[0], runs[1]) {
				t.Errorf("%s: two runs differ", name)
			}
			r := moe.Routing{N: n, E: e, K: k, Probs: probs, Experts: make([]int32, n*k), Gates: make([]float32, n*k), Bias: bias}
			router.Select(&r)
			if !slices.Equal(ex, r.Experts) {
				t.Errorf("%s: experts differ from the CPU's", name)
			}
		}
	}
}

// TestRouterBadArgs: shapes and settings outside moe's rules or the
// kernels' limits are errors, found before any launch (so this runs
// without a GPU); empty batches are no-ops.
func TestRouterBadArgs(t *testing.T) {
	o := &Ops{}
	p := cuda.DevicePtr(1 << 20)
	topk := RouterSpec{Kind: RouterTopK}
	gl := func(g, tg int) RouterSpec { return RouterSpec{Kind: RouterGroupLimited, Groups: g, TopKGroups: tg} }
	moge := func(g int) RouterSpec { return RouterSpec{Kind: RouterMoGE, Groups: g} }
	bad := map[string]error{
		"scores e=0":              o.RouterScores(p, p, 4, 0, moe.Softmax),
		"scores e=257":            o.RouterScores(p, p, 4, 257, moe.Softmax),
		"scores n<0":              o.RouterScores(p, p, -1, 8, moe.Softmax),
		"scores score":            o.RouterScores(p, p, 4, 8, moe.Score(2)),
		"scores null":             o.RouterScores(0, p, 4, 8, moe.Softmax),
		"scores too big":          o.RouterScores(p, p, 1<<28, 8, moe.Sigmoid),
		"scores bwd score":        o.RouterScoresBackward(p, p, p, 4, 8, moe.Score(-1)),
		"scores bwd null":         o.RouterScoresBackward(p, 0, p, 4, 8, moe.Softmax),
		"select k=0":              o.RouterSelect(p, p, p, 0, 4, 8, 0, topk),
		"select k>e":              o.RouterSelect(p, p, p, 0, 4, 8, 9, topk),
		"select k=17":             o.RouterSelect(p, p, p, 0, 4, 64, 17, topk),
		"select e=300":            o.RouterSelect(p, p, p, 0, 4, 300, 2, topk),
		"select moge 3∤64":        o.RouterSelect(p, p, p, 0, 4, 64, 6, moge(3)),
		"select moge 4∤k":         o.RouterSelect(p, p, p, 0, 4, 64, 2, moge(4)),
		"select moge 0":           o.RouterSelect(p, p, p, 0, 4, 64, 2, moge(0)),
		"select gl 5∤64":          o.RouterSelect(p, p, p, 0, 4, 64, 2, gl(5, 1)),
		"select gl tg=0":          o.RouterSelect(p, p, p, 0, 4, 64, 2, gl(8, 0)),
		"select gl tg>groups":     o.RouterSelect(p, p, p, 0, 4, 64, 2, gl(8, 9)),
		"select gl k>tg·gs":       o.RouterSelect(p, p, p, 0, 4, 64, 9, gl(8, 1)),
		"select kind":             o.RouterSelect(p, p, p, 0, 4, 64, 2, RouterSpec{Kind: 7}),
		"select null":             o.RouterSelect(p, 0, p, 0, 4, 64, 2, topk),
		"select too big":          o.RouterSelect(p, p, p, 0, 1<<25, 64, 2, topk),
		"backward k=17":           o.RouterBackward(p, p, p, p, p, 4, 64, 17, topk),
		"backward moge":           o.RouterBackward(p, p, p, p, p, 4, 64, 2, moge(4)),
		"backward null":           o.RouterBackward(p, p, p, 0, p, 4, 64, 2, topk),
		"aux e=0":                 o.RouterAuxStats(p, p, p, p, 0, 4, 0, 1),
		"aux k=0":                 o.RouterAuxStats(p, p, p, p, 0, 4, 8, 0),
		"aux k=17":                o.RouterAuxStats(p, p, p, p, 0, 4, 64, 17),
		"aux null stats":          o.RouterAuxStats(0, p, p, p, 0, 4, 8, 2),
		"aux null probs":          o.RouterAuxStats(p, p, 0, p, 0, 4, 8, 2),
		"aux finish k=0":          o.RouterAuxFinish(p, p, 8, 0),
		"aux finish e=257":        o.RouterAuxFinish(p, p, 257, 2),
		"aux finish null":         o.RouterAuxFinish(0, p, 8, 2),
		"aux backward e=0":        o.RouterAuxBackward(p, p, 0, 4, 0, 1),
		"aux backward null":       o.RouterAuxBackward(0, p, 0, 4, 8, 1),
		"zloss e=0":               o.RouterZLoss(p, p, p, p, 0, 4, 0),
		"zloss null z":            o.RouterZLoss(p, 0, p, p, 0, 4, 8),
		"zloss null lse":          o.RouterZLoss(0, p, p, p, 0, 4, 8),
		"zloss finish null":       o.RouterZLossFinish(0),
		"zloss backward e=300":    o.RouterZLossBackward(p, p, p, p, 0, 4, 300, 1),
		"zloss backward null lse": o.RouterZLossBackward(p, p, 0, p, 0, 4, 8, 1),
	}
	wantErrors(t, bad)
	noop := map[string]error{
		"scores n=0":          o.RouterScores(0, 0, 0, 8, moe.Softmax),
		"scores bwd n=0":      o.RouterScoresBackward(0, 0, 0, 0, 8, moe.Sigmoid),
		"select n=0":          o.RouterSelect(0, 0, 0, 0, 0, 64, 8, gl(8, 4)),
		"backward n=0":        o.RouterBackward(0, 0, 0, 0, 0, 0, 64, 8, moge(8)),
		"aux backward coef=0": o.RouterAuxBackward(p, p, 0, 4, 8, 0),
		"zloss backward n=0":  o.RouterZLossBackward(0, 0, 0, 0, 0, 0, 8, 1),
	}
	wantNoErrors(t, noop)
}

// routerOther is a Router without a GPU kernel.
type routerOther struct{ moe.TopK }

// TestRouterSpecOf: moe's routers map to their specs (topk_groups 0 means
// all groups, as moe.New resolves it); other routers are an error.
func TestRouterSpecOf(t *testing.T) {
	cases := []struct {
		spec moe.Spec
		want RouterSpec
	}{
		{moe.Spec{}, RouterSpec{Kind: RouterTopK}},
		{moe.Spec{Kind: "moge", Groups: 4}, RouterSpec{Kind: RouterMoGE, Groups: 4}},
		{moe.Spec{Kind: "group_limited", Groups: 8}, RouterSpec{Kind: RouterGroupLimited, Groups: 8, TopKGroups: 8}},
		{moe.Spec{Kind: "group_limited", Groups: 8, TopKGroups: 3}, RouterSpec{Kind: RouterGroupLimited, Groups: 8, TopKGroups: 3}},
	}
	for _, c := range cases {
		r, err := moe.New(c.spec, 64, 8)
		if err != nil {
			t.Fatal(err)
		}
		got, err := RouterSpecOf(r)
		if err != nil || got != c.want {
			t.Errorf("%s: %+v, %v; want %+v", routerSpecName(c.spec), got, err, c.want)
		}
		if err := got.check("test", 64, 8); err != nil {
			t.Errorf("%s: %v", routerSpecName(c.spec), err)
		}
	}
	if got, err := RouterSpecOf(&moe.GroupLimited{Groups: 4, TopKGroups: 2}); err != nil || got != (RouterSpec{Kind: RouterGroupLimited, Groups: 4, TopKGroups: 2}) {
		t.Errorf("*GroupLimited: %+v, %v", got, err)
	}
	if _, err := RouterSpecOf(routerOther{}); err == nil {
		t.Error("an unknown router got a spec")
	}
}
