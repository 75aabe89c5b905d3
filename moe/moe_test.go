package moe

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"testing"

	"github.com/moetrain/moetrain/tensor"
)

func randProbs(r *rand.Rand, n, e int) []float32 {
	logits := make([]float32, n*e)
	for i := range logits {
		logits[i] = float32(r.NormFloat64())
	}
	p := make([]float32, n*e)
	tensor.SoftmaxForward(p, logits, n, e)
	return p
}

func TestTopKMatchesSort(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, sh := range [][3]int{{1, 1, 1}, {7, 4, 2}, {13, 8, 2}, {5, 8, 8}, {11, 5, 3}} {
		n, e, k := sh[0], sh[1], sh[2]
		var rt Routing
		rt.Resize(n, e, k)
		copy(rt.Probs, randProbs(r, n, e))
		if n == 5 {
			rt.Probs[0], rt.Probs[1] = 0.25, 0.25 // a tie: lower index first
		}
		TopK{}.Select(&rt)
		for tok := 0; tok < n; tok++ {
			p := rt.Probs[tok*e : (tok+1)*e]
			idx := make([]int, e)
			for i := range idx {
				idx[i] = i
			}
			sort.SliceStable(idx, func(a, b int) bool { return p[idx[a]] > p[idx[b]] })
			var sum float32
			for j := 0; j < k; j++ {
				if int(rt.Experts[tok*k+j]) != idx[j] {
					t.Fatalf("n=%d e=%d k=%d token %d choice %d: expert %d, want %d", n, e, k, tok, j, rt.Experts[tok*k+j], idx[j])
				}
				sum += rt.Gates[tok*k+j]
			}
			if math.Abs(float64(sum)-1) > 1e-6 {
				t.Fatalf("gates sum to %v", sum)
			}
		}
	}
}

func TestPlanGroupsSlots(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	n, e, k := 37, 5, 2
	var rt Routing
	rt.Resize(n, e, k)
	copy(rt.Probs, randProbs(r, n, e))
	TopK{}.Select(&rt)
	var p Plan
	p.Build(&rt)
	if p.Slots() != n*k || p.Offsets[e] != n*k {
		t.Fatalf("plan has %d slots, offsets end %d, want %d", p.Slots(), p.Offsets[e], n*k)
	}
	seen := make([]int, n)
	for x := 0; x < e; x++ {
		prev := int32(-1)
		for s := p.Offsets[x]; s < p.Offsets[x+1]; s++ {
			if p.Token[s] <= prev {
				t.Fatalf("expert %d: slots not in increasing token order", x)
			}
			prev = p.Token[s]
			seen[p.Token[s]]++
		}
		if p.Counts[x] != p.Offsets[x+1]-p.Offsets[x] {
			t.Fatalf("count of expert %d is %d, offsets say %d", x, p.Counts[x], p.Offsets[x+1]-p.Offsets[x])
		}
	}
	for tok := 0; tok < n; tok++ {
		if seen[tok] != k {
			t.Fatalf("token %d appears in %d slots, want %d", tok, seen[tok], k)
		}
		for j := 0; j < k; j++ {
			s := p.SlotOf[tok*k+j]
			x := int(rt.Experts[tok*k+j])
			if int(p.Token[s]) != tok || p.Gate[s] != rt.Gates[tok*k+j] || int(s) < p.Offsets[x] || int(s) >= p.Offsets[x+1] {
				t.Fatalf("SlotOf[%d,%d] = %d is not token %d's slot with expert %d", tok, j, s, tok, x)
			}
		}
	}
}

func TestAuxBalanced(t *testing.T) {
	// Uniform probabilities and perfectly even routing give aux = 1.
	n, e, k := 8, 4, 2
	var rt Routing
	rt.Resize(n, e, k)
	for i := range rt.Probs {
		rt.Probs[i] = 0.25
	}
	for tok := 0; tok < n; tok++ {
		rt.Experts[tok*k], rt.Experts[tok*k+1] = int32(tok%e), int32((tok+1)%e)
	}
	var a Aux
	ComputeAux(&a, &rt, nil)
	if math.Abs(a.Value-1) > 1e-6 {
		t.Fatalf("balanced aux = %v, want 1", a.Value)
	}
	// Only counted tokens enter the statistics: token 0 alone, routed to
	// experts 0 and 1 with probabilities (.7, .1, .1, .1), gives
	// f = (.5, .5, 0, 0), P = (.7, .1, .1, .1), aux = 4·(.35 + .05) = 1.6.
	copy(rt.Probs[:4], []float32{0.7, 0.1, 0.1, 0.1})
	mask := make([]bool, n)
	mask[0] = true
	ComputeAux(&a, &rt, mask)
	if a.Count != 1 || math.Abs(a.Value-1.6) > 1e-6 {
		t.Fatalf("masked aux = %v over %d tokens, want 1.6 over 1", a.Value, a.Count)
	}
}

// normals returns m draws of r's normal distribution scaled by s.
func normals(r *rand.Rand, m int, s float64) []float32 {
	x := make([]float32, m)
	for i := range x {
		x[i] = float32(r.NormFloat64() * s)
	}
	return x
}

// gradPair is a buffer of parameters (or inputs) and the analytic gradient
// of a loss with respect to it.
type gradPair struct {
	name string
	p, g []float32
}

// layerGradPairs pairs a layer's input and weights with their gradients.
func layerGradPairs(x, dx []float32, w, dw Weights) []gradPair {
	out := []gradPair{{"x", x, dx}, {"router", w.Router, dw.Router}, {"w1", w.W1, dw.W1}, {"w2", w.W2, dw.W2}}
	if w.Down != nil {
		out = append(out, gradPair{"down", w.Down, dw.Down}, gradPair{"up", w.Up, dw.Up})
	}
	return out
}

// zeroWeights is a zero Weights shaped like w.
func zeroWeights(w Weights) Weights {
	z := Weights{Router: make([]float32, len(w.Router)), W1: make([]float32, len(w.W1)), W2: make([]float32, len(w.W2))}
	if w.Down != nil {
		z.Down, z.Up = make([]float32, len(w.Down)), make([]float32, len(w.Up))
	}
	return z
}

// checkStableGrads compares every coordinate's analytic gradient with
// fd(p, i), its finite difference, skipping coordinates where fd reports
// that the perturbation changed a routing decision; at least half of each
// buffer's coordinates must be checked.
func checkStableGrads(t *testing.T, label string, pairs []gradPair, fd func(p []float32, i int) (float64, bool)) {
	t.Helper()
	for _, c := range pairs {
		checked := 0
		for i := range c.p {
			d, ok := fd(c.p, i)
			if !ok {
				continue
			}
			g := float64(c.g[i])
			if math.Abs(d-g) > 1e-2*(1e-2+math.Abs(g)) {
				t.Errorf("%s %s[%d]: analytic %.6g, finite difference %.6g", label, c.name, i, g, d)
			}
			checked++
		}
		if checked < len(c.p)/2 {
			t.Errorf("%s %s: only %d of %d coordinates had stable routing", label, c.name, checked, len(c.p))
		}
	}
}

// checkLayerGrads checks Backward of the TopK layer (weights w, input x of
// n tokens, mask as Forward takes it) against central finite differences
// of the probe loss L = Σ probe·out + coef·aux, a float64 accumulation of
// float32 outputs, over the coordinates whose perturbation leaves every
// routing decision as it was (checkStableGrads).
func checkLayerGrads(t *testing.T, label string, dm Dims, n int, coef float64, x []float32, w Weights, probe []float32, mask []bool) {
	t.Helper()
	var st State
	var sc Scratch
	st.Resize(dm, n)
	sc.Resize(dm, n)
	out := make([]float32, n*dm.D)
	loss := func() float64 {
		clear(out)
		Forward(out, x, w, dm, TopK{}, mask, &st)
		s := coef * st.Aux.Value
		for i := range out {
			s += float64(probe[i]) * float64(out[i])
		}
		return s
	}
	loss()
	base := slices.Clone(st.Routing.Experts)
	stable := func() bool { return slices.Equal(st.Routing.Experts, base) }
	dx := make([]float32, n*dm.D)
	dw := zeroWeights(w)
	Backward(dx, dw, probe, x, w, dm, TopK{}, mask, coef, &st, &sc)
	checkStableGrads(t, label, layerGradPairs(x, dx, w, dw), func(p []float32, i int) (float64, bool) {
		old := p[i]
		const eps = 1e-2
		p[i] = old + eps
		lp := loss()
		ok := stable()
		p[i] = old - eps
		lm := loss()
		ok = ok && stable()
		p[i] = old
		return (lp - lm) / (float64(old+eps) - float64(old-eps)), ok
	})
}

// TestLayerGradCheck checks the MoE layer's backward (gates, router softmax,
// aux loss, experts) against central finite differences of the probe loss
// L = Σ r·out + coef·aux on a float64 accumulation of float32 outputs.
func TestLayerGradCheck(t *testing.T) {
	for _, k := range []int{1, 2, 3} {
		dm := Dims{D: 6, H: 10, E: 4, K: k}
		const n = 9
		const coef = 0.7
		r := rand.New(rand.NewPCG(5, uint64(k)))
		rnd := func(m int, s float64) []float32 { return normals(r, m, s) }
		x := rnd(n*dm.D, 1)
		w := Weights{Router: rnd(dm.E*dm.D, 0.8), W1: rnd(dm.E*dm.H*dm.D, 0.5), W2: rnd(dm.E*dm.D*dm.H, 0.5)}
		probe := rnd(n*dm.D, 1)
		mask := make([]bool, n)
		for i := range mask {
			mask[i] = i != 4
		}
		checkLayerGrads(t, fmt.Sprintf("k=%d", k), dm, n, coef, x, w, probe, mask)
	}
}

// TestRowBlocksCoverEachRowOnce: for any thread budget the row blocks
// visit every row exactly once, each piece inside one expert, and no more
// units run at once than the budget.
func TestRowBlocksCoverEachRowOnce(t *testing.T) {
	prev := tensor.Threads()
	defer tensor.SetThreads(prev)
	r := rand.New(rand.NewPCG(8, 8))
	for trial := 0; trial < 300; trial++ {
		ne := 1 + r.IntN(12)
		offsets := make([]int, ne+1)
		offsets[0] = r.IntN(3) * r.IntN(50) // a chunk's offsets need not start at 0
		for e := 0; e < ne; e++ {
			c := r.IntN(120)
			if r.IntN(4) == 0 {
				c = 0
			}
			offsets[e+1] = offsets[e] + c
		}
		tensor.SetThreads(1 + r.IntN(5))
		seen := make([]int32, offsets[ne])
		var mu sync.Mutex
		active, most := 0, 0
		nb := splitFor(offsets[ne] - offsets[0])
		forUnits(nb, func(u int) {
			mu.Lock()
			active++
			most = max(most, active)
			mu.Unlock()
			eachPiece(offsets, u, nb, func(e, lo, c int) {
				mu.Lock()
				defer mu.Unlock()
				if c <= 0 || lo < offsets[e] || lo+c > offsets[e+1] {
					t.Errorf("offsets %v: piece of expert %d rows [%d,%d) outside [%d,%d)", offsets, e, lo, lo+c, offsets[e], offsets[e+1])
					return
				}
				for i := lo; i < lo+c; i++ {
					seen[i]++
				}
			})
			mu.Lock()
			active--
			mu.Unlock()
		})
		for i, n := range seen {
			if want := int32(min(1, max(0, i-offsets[0]+1))); n != want {
				t.Fatalf("offsets %v, threads %d: row %d visited %d times, want %d", offsets, tensor.Threads(), i, n, want)
			}
		}
		if most > tensor.Threads() {
			t.Fatalf("offsets %v, threads %d: %d units at once", offsets, tensor.Threads(), most)
		}
	}
}

// TestStripTiles: the h-strips of nt threads tile [0, n) in order.
func TestStripTiles(t *testing.T) {
	for n := 1; n < 200; n += 7 {
		for nt := 1; nt <= 6; nt++ {
			next := 0
			for th := 0; th < nt; th++ {
				j0, j1 := strip(n, th, nt)
				if j0 != next || j1 < j0 {
					t.Fatalf("n=%d nt=%d: strip %d is [%d,%d), want it to start at %d", n, nt, th, j0, j1, next)
				}
				next = j1
			}
			if next != n {
				t.Fatalf("n=%d nt=%d: strips end at %d", n, nt, next)
			}
		}
	}
}
