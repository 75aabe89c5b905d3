package model

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/moetrain/moetrain/moe"
	"github.com/moetrain/moetrain/tensor"
)

// Sub-layer gradient checks: each layer's backward against central finite
// differences of a probe loss L = Σ probe·output (+ aux for the MoE), with
// respect to its input and every weight it owns.

type sublayerFixture struct {
	cfg   Config
	in    Input
	dm    Dims
	acts  *Acts
	w, dw Weights
	rng   *rand.Rand
}

func newFixture(t *testing.T, seed uint64) *sublayerFixture {
	t.Helper()
	cfg := tinyConfig()
	const b, tt = 2, 7
	in := randomInput(cfg, b, tt, seed)
	in.Seg = []int32{0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 2, 2}
	m, err := New(cfg, seed)
	if err != nil {
		t.Fatal(err)
	}
	f := &sublayerFixture{cfg: cfg, in: in, acts: newActs(cfg, Whole, b*tt), w: m.P, rng: rand.New(rand.NewPCG(seed, 1))}
	f.dw = m.Layout.Views(make([]float32, m.Layout.Total))
	f.dm = Dims{N: b * tt, D: cfg.DModel, Heads: cfg.Heads, Eps: float32(cfg.NormEps), Attn: AttnShape(cfg, b, tt, in.Seg)}
	for i := range f.acts.Mask {
		f.acts.Mask[i] = i%5 != 3
	}
	return f
}

func (f *sublayerFixture) random(x []float32, std float64) {
	for i := range x {
		x[i] = float32(f.rng.NormFloat64() * std)
	}
}

func probeLoss(probe, out []float32) float64 {
	s := 0.0
	for i := range probe {
		s += float64(probe[i]) * float64(out[i])
	}
	return s
}

func TestAttentionSublayerGradCheck(t *testing.T) {
	f := newFixture(t, 41)
	a, w, dw := &f.acts.Layers[0], f.w.Layers[0], f.dw.Layers[0]
	n, d := f.dm.N, f.dm.D
	f.random(a.In[:n*d], 1)
	f.random(w.LN1, 0.3)
	for i := range w.LN1 {
		w.LN1[i] += 1
	}
	probe := make([]float32, n*d)
	f.random(probe, 1)
	loss := func() float64 {
		AttentionForward(a, w, f.dm)
		return probeLoss(probe, a.Mid[:n*d])
	}
	loss()
	dres := slices.Clone(probe)
	AttentionBackward(dres, dw, a, w, f.dm, make([]float32, n*d), make([]float32, 3*n*d), make([]float32, n*f.cfg.Heads))
	din := dres
	always := func() bool { return true }
	fdCheck(t, "in", a.In[:n*d], din, sampleIdx(n*d, 40, f.rng), 1e-2, loss, always)
	fdCheck(t, "ln1", w.LN1, dw.LN1, sampleIdx(d, 16, f.rng), 1e-2, loss, always)
	fdCheck(t, "qkv", w.QKV, dw.QKV, sampleIdx(len(w.QKV), 40, f.rng), 1e-2, loss, always)
	fdCheck(t, "proj", w.Proj, dw.Proj, sampleIdx(len(w.Proj), 40, f.rng), 1e-2, loss, always)
}

func TestMoESublayerGradCheck(t *testing.T) {
	f := newFixture(t, 42)
	a, w, dw := &f.acts.Layers[0], f.w.Layers[0], f.dw.Layers[0]
	n, d := f.dm.N, f.dm.D
	md := moeDims(f.cfg)
	a.MoE.Resize(md, n)
	f.random(a.Mid[:n*d], 1)
	probe := make([]float32, n*d)
	f.random(probe, 1)
	const coef = 0.5
	mask := f.acts.Mask[:n]
	router := TopKRouterForTest()
	loss := func() float64 {
		MoEForward(a, w, f.dm, md, router, mask)
		return probeLoss(probe, a.Out[:n*d]) + coef*a.MoE.Aux.Value
	}
	loss()
	base := slices.Clone(a.MoE.Routing.Experts)
	stable := func() bool { return slices.Equal(a.MoE.Routing.Experts, base) }
	dres := slices.Clone(probe)
	var sc moe.Scratch
	sc.Resize(md, n)
	MoEBackward(dres, dw, a, w, f.dm, md, router, mask, coef, make([]float32, n*d), &sc)
	checked := fdCheck(t, "mid", a.Mid[:n*d], dres, sampleIdx(n*d, 40, f.rng), 1e-2, loss, stable)
	checked += fdCheck(t, "ln2", w.LN2, dw.LN2, sampleIdx(d, 16, f.rng), 1e-2, loss, stable)
	checked += fdCheck(t, "router", w.Router, dw.Router, sampleIdx(len(w.Router), 40, f.rng), 1e-2, loss, stable)
	checked += fdCheck(t, "w1", w.W1, dw.W1, sampleIdx(len(w.W1), 40, f.rng), 1e-2, loss, stable)
	checked += fdCheck(t, "w2", w.W2, dw.W2, sampleIdx(len(w.W2), 40, f.rng), 1e-2, loss, stable)
	if checked < 100 {
		t.Fatalf("only %d coordinates had stable routing", checked)
	}
}

func TestHeadAndEmbeddingGradCheck(t *testing.T) {
	f := newFixture(t, 43)
	n, d, v := f.dm.N, f.dm.D, f.cfg.Vocab
	x := make([]float32, n*d)
	f.random(x, 1)
	lnf, rstd, logits := make([]float32, n*d), make([]float32, n), make([]float32, n*v)
	losses, dlogits := make([]float32, n), make([]float32, n*v)
	targets := slices.Clone(f.in.Targets)
	targets[2] = -1
	loss := func() float64 {
		HeadForward(lnf, rstd, logits, x, f.w, f.dm, v)
		s, c := tensor.CrossEntropy(losses, dlogits, logits, targets, n, v, 1/float32(n-1))
		return s / float64(c)
	}
	loss()
	dres := make([]float32, n*d)
	HeadBackward(dres, f.dw, dlogits, lnf, rstd, x, f.w, f.dm, v, make([]float32, n*d))
	always := func() bool { return true }
	fdCheck(t, "head in", x, dres, sampleIdx(n*d, 40, f.rng), 1e-2, loss, always)
	fdCheck(t, "ln_f", f.w.LNF, f.dw.LNF, sampleIdx(d, 16, f.rng), 1e-2, loss, always)
	fdCheck(t, "lm_head", f.w.Head, f.dw.Head, sampleIdx(len(f.w.Head), 40, f.rng), 1e-2, loss, always)

	// Embeddings: L = Σ probe·(tok[ids] + pos[pos]).
	emb, scratch := make([]float32, n*d), make([]float32, n*d)
	probe := make([]float32, n*d)
	f.random(probe, 1)
	eloss := func() float64 {
		EmbedForward(emb, scratch, f.in.Tokens, f.in.Pos, f.w.TokEmb, f.w.PosEmb, d)
		return probeLoss(probe, emb)
	}
	eloss()
	EmbedBackward(f.dw.TokEmb, f.dw.PosEmb, probe, f.in.Tokens, f.in.Pos, d)
	fdCheck(t, "tok_emb", f.w.TokEmb, f.dw.TokEmb, sampleIdx(len(f.w.TokEmb), 40, f.rng), 1e-2, eloss, always)
	fdCheck(t, "pos_emb", f.w.PosEmb, f.dw.PosEmb, sampleIdx(len(f.w.PosEmb), 40, f.rng), 1e-2, eloss, always)
}
