package model

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/moetrain/moetrain/moe"
)

// tinyConfig is small enough for finite differences over every tensor.
// init_std is large so gradients stand well above float32 rounding noise, and
// aux_coef is large so the aux-loss path carries weight in the check.
func tinyConfig() Config {
	return Config{
		Vocab: 32, DModel: 16, Layers: 2, Heads: 2, SeqLen: 8, NormEps: 1e-5,
		Experts: 4, ExpertHidden: 24, TopK: 2, AuxCoef: 0.5, InitStd: 0.3, Router: "topk",
	}
}

// mustNew is New(cfg, 1); an error fails t.
func mustNew(t testing.TB, cfg Config) *Model {
	t.Helper()
	m, err := New(cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func randomInput(cfg Config, b, t int, seed uint64) Input {
	r := rand.New(rand.NewPCG(seed, 7))
	n := b * t
	in := Input{B: b, T: t, Tokens: make([]int32, n), Targets: make([]int32, n), Pos: make([]int32, n)}
	for i := 0; i < n; i++ {
		in.Tokens[i] = int32(r.IntN(cfg.Vocab))
		in.Targets[i] = int32(r.IntN(cfg.Vocab))
		in.Pos[i] = int32(i % t)
	}
	return in
}

// routingSnapshot returns every layer's chosen experts of the last forward.
func routingSnapshot(m *Model) []int32 {
	var out []int32
	for l := range m.acts.Layers {
		r := &m.acts.Layers[l].MoE.Routing
		out = append(out, r.Experts[:r.N*r.K]...)
	}
	return out
}

// fdCheck compares grad[i] with the central difference of loss at x[i] for
// the given indices. Coordinates where the perturbation flips a routing
// decision (stable returns false) are skipped: the loss is only piecewise
// smooth there. It returns how many coordinates were checked.
func fdCheck(t *testing.T, name string, x, grad []float32, idx []int, eps float32, loss func() float64, stable func() bool) int {
	t.Helper()
	checked, worst := 0, 0.0
	for _, i := range idx {
		old := x[i]
		x[i] = old + eps
		lp := loss()
		okp := stable()
		x[i] = old - eps
		lm := loss()
		okm := stable()
		x[i] = old
		if !okp || !okm {
			continue
		}
		// Use the actually representable step.
		h := float64(old+eps) - float64(old-eps)
		fd := (lp - lm) / h
		g := float64(grad[i])
		err := math.Abs(fd-g) / (2e-3 + math.Abs(g))
		worst = math.Max(worst, err)
		if err > 2e-2 {
			t.Errorf("%s[%d]: analytic %.6g, finite difference %.6g (rel err %.3g)", name, i, g, fd, err)
		}
		checked++
	}
	t.Logf("%s: %d coordinates checked, worst rel err %.3g", name, checked, worst)
	return checked
}

func sampleIdx(n, k int, r *rand.Rand) []int {
	if n <= k {
		idx := make([]int, n)
		for i := range idx {
			idx[i] = i
		}
		return idx
	}
	idx := r.Perm(n)[:k]
	slices.Sort(idx)
	return idx
}

// TestModelGradCheck checks the whole model's gradient (every layer's
// backward contributes) against central finite differences of the float32
// loss, tensor by tensor, with and without ignored targets.
func TestModelGradCheck(t *testing.T) {
	cfg := tinyConfig()
	m := mustNew(t, cfg)
	checkModelGradients(t, m, cfg)
}

// checkModelGradients checks m's whole gradient (every layer's backward
// contributes) against central finite differences of the float32 loss,
// tensor by tensor, on a batch with an ignored target.
func checkModelGradients(t *testing.T, m *Model, cfg Config) {
	t.Helper()
	in := randomInput(cfg, 2, 8, 3)
	in.Targets[5] = -1 // an ignored target inside a row
	if _, err := m.ForwardBackward(in); err != nil {
		t.Fatal(err)
	}
	grad := slices.Clone(m.Grads)
	base := routingSnapshot(m)
	loss := func() float64 {
		r, err := m.Forward(in, false)
		if err != nil {
			t.Fatal(err)
		}
		return r.Loss
	}
	stable := func() bool { return slices.Equal(routingSnapshot(m), base) }
	r := rand.New(rand.NewPCG(9, 9))
	total := 0
	for _, e := range m.Layout.Entries {
		p, g := e.Slice(m.Params), e.Slice(grad)
		total += fdCheck(t, e.Name, p, g, sampleIdx(len(p), 12, r), 1e-2, loss, stable)
	}
	if total < len(m.Layout.Entries)*6 {
		t.Fatalf("only %d coordinates had stable routing; the check is too weak", total)
	}
}

// TopKRouterForTest is the default router, built as New builds it.
func TopKRouterForTest() moe.Router {
	r, _ := moe.NewRouter("topk")
	return r
}
