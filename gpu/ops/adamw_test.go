package ops

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/internal/testkit"
	"github.com/moetrain/moetrain/optim"
)

var ewAdamWCfg = optim.Config{Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1}

// ewAdamWRanges are (buffer length, lo, hi): single elements, odd lengths,
// several chunks, a misaligned start (lo = 3: scalar path) and empty ranges.
var ewAdamWRanges = [][3]int{{1, 0, 1}, {5, 1, 4}, {37, 0, 37}, {1027, 3, 1027}, {20000, 4, 20000},
	{100003, 0, 100003}, {100003, 8, 90001}, {10, 5, 5}}

func TestAdamW(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(23, 24))
	for _, r := range ewAdamWRanges {
		size, lo, hi := r[0], r[1], r[2]
		n := hi - lo
		params := randn(rng, size, 1)
		cpu, err := optim.NewAdamW(ewAdamWCfg, lo, hi)
		if err != nil {
			t.Fatal(err)
		}
		cpuP := append([]float32(nil), params...)
		dp := upload(t, o, params)
		dm, dv := upload(t, o, make([]float32, n)), upload(t, o, make([]float32, n))
		scratch := poisoned(t, o, AdamWScratch(n))
		sumSq := ewF64(t, o, 1)
		// The bf16 copy: written over the range only (the rest keeps its
		// poison), each value the rounding of the updated parameter.
		p16 := devAlloc(t, o, 4*(size/2+1))
		if err := o.C.Fill32(o.S, p16, size/2+1, 0xffffffff); err != nil {
			t.Fatal(err)
		}
		for step := 1; step <= 3; step++ {
			grads := randn(rng, size, 0.01)
			lr, gs := 1e-3*float64(step), 0.7
			wantSS, err := cpu.Update(cpuP, grads, step, lr, gs)
			if err != nil {
				t.Fatal(err)
			}
			s := AdamWStep{Beta1: ewAdamWCfg.Beta1, Beta2: ewAdamWCfg.Beta2, Eps: ewAdamWCfg.Eps, WeightDecay: ewAdamWCfg.WeightDecay,
				T: step, LR: lr, GradScale: gs, P16: p16}
			if err := o.AdamWUpdate(dp, upload(t, o, grads), dm, dv, lo, hi, s, scratch, sumSq); err != nil {
				t.Fatal(err)
			}
			gotP := download[float32](t, o, dp, size)
			if e := relErr(gotP[lo:hi], cpuP[lo:hi]); e > 1e-6 {
				t.Fatalf("range %v step %d: params rel err %g", r, step, e)
			}
			got16 := download[uint16](t, o, p16, size)
			for i := range got16 {
				want := uint16(0xffff)
				if i >= lo && i < hi {
					want = bf16Bits(gotP[i])
				}
				if got16[i] != want {
					t.Fatalf("range %v step %d: bf16 copy [%d] = %#04x, want %#04x", r, step, i, got16[i], want)
				}
			}
			if testkit.FirstBitDiff(gotP[:lo], cpuP[:lo]) >= 0 || testkit.FirstBitDiff(gotP[hi:], cpuP[hi:]) >= 0 {
				t.Fatalf("range %v step %d: params outside the range changed", r, step)
			}
			if e := relErr(download[float32](t, o, dm, n), cpu.M); e > 1e-6 {
				t.Fatalf("range %v step %d: m rel err %g", r, step, e)
			}
			if e := relErr(download[float32](t, o, dv, n), cpu.V); e > 1e-6 {
				t.Fatalf("range %v step %d: v rel err %g", r, step, e)
			}
			if got := download[float64](t, o, sumSq, 1)[0]; ewRel64(got, wantSS) > 1e-12 {
				t.Fatalf("range %v step %d: Σg² = %v, want %v", r, step, got, wantSS)
			}
		}
	}
}

// TestAdamWDeterministic: the same step from the same state twice gives the
// same bits (params, moments, Σg²), also without sumSq.
func TestAdamWDeterministic(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(25, 26))
	const size, lo, hi = 100003, 4, 100001
	n := hi - lo
	params, grads := randn(rng, size, 1), randn(rng, size, 0.01)
	m, v := randn(rng, n, 0.01), randn(rng, n, 0.01)
	for i := range v {
		v[i] *= v[i]
	}
	dg := upload(t, o, grads)
	scratch := poisoned(t, o, AdamWScratch(n))
	s := AdamWStep{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01, T: 7, LR: 3e-4, GradScale: 1}
	var first [3][]float32
	var firstSS float64
	for run := 0; run < 3; run++ {
		dp, dm, dv, ss := upload(t, o, params), upload(t, o, m), upload(t, o, v), ewF64(t, o, 1)
		sumSq := ss
		if run == 2 {
			sumSq = 0
		}
		if err := o.AdamWUpdate(dp, dg, dm, dv, lo, hi, s, scratch, sumSq); err != nil {
			t.Fatal(err)
		}
		got := [3][]float32{download[float32](t, o, dp, size), download[float32](t, o, dm, n), download[float32](t, o, dv, n)}
		gotSS := download[float64](t, o, ss, 1)[0]
		if run == 0 {
			first, firstSS = got, gotSS
			continue
		}
		for k := range got {
			if i := testkit.FirstBitDiff(got[k], first[k]); i >= 0 {
				t.Fatalf("run %d: buffer %d differs at %d", run, k, i)
			}
		}
		if run == 1 && math.Float64bits(gotSS) != math.Float64bits(firstSS) {
			t.Fatalf("Σg² %v then %v", firstSS, gotSS)
		}
		if run == 2 && !math.IsNaN(gotSS) {
			t.Fatalf("sumSq = 0 still wrote Σg² (%v)", gotSS)
		}
	}
}

// TestAdamWDeviceClip: GlobalNorm then AdamWUpdate with ClipNorm pointing at
// the norm matches the trainer's host path (GlobalNorm, ClipScale, Update).
func TestAdamWDeviceClip(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(27, 28))
	const size = 50001
	params, grads := randn(rng, size, 1), randn(rng, size, 0.01)
	for _, maxNorm := range []float64{0.5, 1e9} { // clipping, then not
		norm := optim.GlobalNorm(grads)
		cpu, _ := optim.NewAdamW(ewAdamWCfg, 0, size)
		cpuP := append([]float32(nil), params...)
		wantSS, _ := cpu.Update(cpuP, grads, 1, 1e-3, optim.ClipScale(norm, maxNorm))

		dp, dg := upload(t, o, params), upload(t, o, grads)
		dm, dv := upload(t, o, make([]float32, size)), upload(t, o, make([]float32, size))
		scratch, out := poisoned(t, o, SumSquaresScratch(size)), ewF64(t, o, 2)
		if err := o.GlobalNorm(dg, size, scratch, out); err != nil {
			t.Fatal(err)
		}
		s := AdamWStep{Beta1: ewAdamWCfg.Beta1, Beta2: ewAdamWCfg.Beta2, Eps: ewAdamWCfg.Eps, WeightDecay: ewAdamWCfg.WeightDecay,
			T: 1, LR: 1e-3, GradScale: 1, ClipNorm: out, MaxNorm: maxNorm}
		if err := o.AdamWUpdate(dp, dg, dm, dv, 0, size, s, scratch, out.Add(8)); err != nil {
			t.Fatal(err)
		}
		got := download[float64](t, o, out, 2)
		if ewRel64(got[0], norm) > 1e-12 || ewRel64(got[1], wantSS) > 1e-12 {
			t.Fatalf("maxNorm %g: norm %v Σg² %v, want %v %v", maxNorm, got[0], got[1], norm, wantSS)
		}
		if e := relErr(download[float32](t, o, dp, size), cpuP); e > 1e-6 {
			t.Fatalf("maxNorm %g: params rel err %g", maxNorm, e)
		}
		if e := relErr(download[float32](t, o, dm, size), cpu.M); e > 1e-6 {
			t.Fatalf("maxNorm %g: m rel err %g", maxNorm, e)
		}
	}
}

func TestAdamWBadSizes(t *testing.T) {
	o := &Ops{}
	p := cuda.DevicePtr(1 << 20)
	s := AdamWStep{Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, T: 1, LR: 1e-3, GradScale: 1}
	bad := s
	bad.T = 0
	misClip := s
	misClip.ClipNorm = p + 4
	wantErrors(t, map[string]error{
		"lo<0":          o.AdamWUpdate(p, p, p, p, -1, 4, s, p, p),
		"hi<lo":         o.AdamWUpdate(p, p, p, p, 5, 4, s, p, p),
		"t=0":           o.AdamWUpdate(p, p, p, p, 0, 4, bad, p, p),
		"null m":        o.AdamWUpdate(p, p, 0, p, 0, 4, s, p, p),
		"sumSq align":   o.AdamWUpdate(p, p, p, p, 0, 4, s, p, p+4),
		"null scratch":  o.AdamWUpdate(p, p, p, p, 0, 4, s, 0, p),
		"clip align":    o.AdamWUpdate(p, p, p, p, 0, 4, misClip, p, p),
		"norm null out": o.GlobalNorm(p, 4, p, 0),
	})
	if err := o.AdamWUpdate(0, 0, 0, 0, 3, 3, s, 0, 0); err != nil {
		t.Errorf("empty range: %v", err)
	}
}
