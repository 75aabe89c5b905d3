package model

import (
	"github.com/moetrain/moetrain/moe"
	"github.com/moetrain/moetrain/tensor"
)

// Each block is two residual sub-layers; each sub-layer is a pair of free
// functions with explicit inputs and outputs. Backward functions take dres,
// the gradient of the sub-layer's output residual stream, and ACCUMULATE the
// gradient of its input residual stream into the same buffer (the residual
// path passes it through unchanged), plus the weight gradients.

// Dims are the sizes every layer function needs.
type Dims struct {
	N, D, Heads int
	Eps         float32
	Attn        tensor.AttnShape // batch geometry for the packed QKV layout
}

// AttnShape is the attention geometry of a B×T batch over packed QKV rows
// [N, 3D] (q, k, v at column offsets 0, D, 2D); seg may be nil.
func AttnShape(cfg Config, b, t int, seg []int32) tensor.AttnShape {
	d := cfg.DModel
	return tensor.AttnShape{
		Batch: b, Tq: t, Tk: t, Heads: cfg.Heads, HeadDim: cfg.HeadDim(),
		QStride: 3 * d, KStride: 3 * d, VStride: 3 * d, OStride: d,
		Causal: true, QSeg: seg, KSeg: seg,
	}
}

// EmbedForward writes out[i] = tok[ids[i]] + pos[pos[i]]; scratch [N, D].
func EmbedForward(out, scratch []float32, ids, pos []int32, tok, posTable []float32, d int) {
	tensor.EmbeddingForward(out, ids, tok, d)
	tensor.EmbeddingForward(scratch, pos, posTable, d)
	tensor.AddInPlace(out, scratch)
}

// EmbedBackward accumulates dres into the rows of dtok and dpos.
func EmbedBackward(dtok, dpos []float32, dres []float32, ids, pos []int32, d int) {
	tensor.EmbeddingBackward(dtok, ids, dres, d)
	tensor.EmbeddingBackward(dpos, pos, dres, d)
}

// AttentionForward: ln1 = RMSNorm(in), qkv = ln1·Wqkvᵀ, att = causal
// attention, mid = in + att·Wprojᵀ.
func AttentionForward(a *LayerActs, w LayerWeights, dm Dims) {
	n, d := dm.N, dm.D
	tensor.RMSNormForward(a.LN1, a.Rstd1, a.In, w.LN1, n, d, dm.Eps)
	tensor.Gemm(false, true, n, 3*d, d, a.LN1, d, w.QKV, d, 0, a.QKV, 3*d)
	tensor.AttentionForward(a.Att, a.LSE, a.QKV, a.QKV[d:], a.QKV[2*d:], dm.Attn)
	copyPar(a.Mid, a.In[:n*d])
	tensor.Gemm(false, true, n, d, d, a.Att, d, w.Proj, d, 1, a.Mid, d)
}

// AttentionBackward: dres holds ∂L/∂mid on entry and ∂L/∂in on return.
// datt [N, D], dqkv [N, 3D], attD [B·Heads·T] are scratch.
func AttentionBackward(dres []float32, dw LayerWeights, a *LayerActs, w LayerWeights, dm Dims, datt, dqkv, attD []float32) {
	n, d := dm.N, dm.D
	tensor.Gemm(true, false, d, d, n, dres, d, a.Att, d, 1, dw.Proj, d)
	tensor.Gemm(false, false, n, d, d, dres, d, w.Proj, d, 0, datt, d)
	zero(dqkv[:n*3*d])
	tensor.AttentionRowDot(attD, datt, a.Att, dm.Attn)
	tensor.AttentionBackward(dqkv, dqkv[d:], dqkv[2*d:], datt, a.QKV, a.QKV[d:], a.QKV[2*d:], a.LSE, attD, dm.Attn)
	tensor.Gemm(true, false, 3*d, d, n, dqkv, 3*d, a.LN1, d, 1, dw.QKV, d)
	dln := datt // reuse: datt is dead now
	tensor.Gemm(false, false, n, d, 3*d, dqkv, 3*d, w.QKV, d, 0, dln, d)
	tensor.RMSNormBackward(dres, dw.LN1, dln, a.In, w.LN1, a.Rstd1, n, d)
}

// MoEForward: ln2 = RMSNorm(mid), out = mid + MoE(ln2).
func MoEForward(a *LayerActs, w LayerWeights, dm Dims, md moe.Dims, router moe.Router, mask []bool) {
	n, d := dm.N, dm.D
	tensor.RMSNormForward(a.LN2, a.Rstd2, a.Mid, w.LN2, n, d, dm.Eps)
	copyPar(a.Out, a.Mid[:n*d])
	moe.Forward(a.Out, a.LN2, moeWeights(w), md, router, mask, &a.MoE)
}

// MoEBackward: dres holds ∂L/∂out on entry and ∂L/∂mid on return; dln [N, D]
// and sc are scratch.
func MoEBackward(dres []float32, dw LayerWeights, a *LayerActs, w LayerWeights, dm Dims, md moe.Dims, router moe.Router, mask []bool, auxCoef float64, dln []float32, sc *moe.Scratch) {
	n, d := dm.N, dm.D
	zero(dln[:n*d])
	moe.Backward(dln, moeWeights(dw), dres, a.LN2, moeWeights(w), md, router, mask, auxCoef, &a.MoE, sc)
	tensor.RMSNormBackward(dres, dw.LN2, dln, a.Mid, w.LN2, a.Rstd2, n, d)
}

func moeWeights(w LayerWeights) moe.Weights {
	return moe.Weights{Router: w.Router, W1: w.W1, W2: w.W2}
}

// HeadForward: lnf = RMSNorm(in), logits = lnf·Headᵀ.
func HeadForward(lnf, rstd, logits, in []float32, w Weights, dm Dims, vocab int) {
	n, d := dm.N, dm.D
	tensor.RMSNormForward(lnf, rstd, in, w.LNF, n, d, dm.Eps)
	tensor.Gemm(false, true, n, vocab, d, lnf, d, w.Head, d, 0, logits, vocab)
}

// HeadBackward: given dlogits, OVERWRITES dres with ∂L/∂in (the head is the
// first sub-layer of the backward); dln [N, D] is scratch.
func HeadBackward(dres []float32, dw Weights, dlogits, lnf, rstd, in []float32, w Weights, dm Dims, vocab int, dln []float32) {
	n, d := dm.N, dm.D
	tensor.Gemm(true, false, vocab, d, n, dlogits, vocab, lnf, d, 1, dw.Head, d)
	tensor.Gemm(false, false, n, d, vocab, dlogits, vocab, w.Head, d, 0, dln, d)
	zero(dres[:n*d])
	tensor.RMSNormBackward(dres, dw.LNF, dln, in, w.LNF, rstd, n, d)
}
