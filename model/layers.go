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
	N, D int
	// C is the attention width of this rank's heads, Heads·HeadDim (D when
	// unsharded); Heads is this rank's head count.
	C, Heads int
	Eps      float32
	Attn     tensor.AttnShape // batch geometry for the packed QKV layout
	// Comms (nil = serial) supplies the tensor- and sequence-parallel
	// exchanges (see Comms).
	Comms Comms
}

// AttnShape is the attention geometry of a B×T batch over packed QKV rows
// [N, 3D] (q, k, v at column offsets 0, D, 2D); seg may be nil.
func AttnShape(cfg Config, b, t int, seg []int32) tensor.AttnShape {
	return localAttnShape(cfg.Heads, cfg.HeadDim(), b, t, seg)
}

// localAttnShape is AttnShape for heads heads of size hd (a tensor-parallel
// rank's share): packed rows [N, 3C], C = heads·hd.
func localAttnShape(heads, hd, b, t int, seg []int32) tensor.AttnShape {
	c := heads * hd
	return tensor.AttnShape{
		Batch: b, Tq: t, Tk: t, Heads: heads, HeadDim: hd,
		QStride: 3 * c, KStride: 3 * c, VStride: 3 * c, OStride: c,
		Causal: true, QSeg: seg, KSeg: seg,
	}
}

// width is dm.C, defaulting to D (callers that fill Dims by hand).
func (dm Dims) width() int {
	if dm.C == 0 {
		return dm.D
	}
	return dm.C
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
// attention, mid = in + att·Wprojᵀ. Under tensor parallelism this rank holds
// C = D/TP of the heads: qkv rows of its heads (column parallel) and the
// matching proj columns (row parallel), so the projection is a partial sum
// completed over TP; under sequence parallelism attention spans the SP group.
func AttentionForward(a *LayerActs, w LayerWeights, dm Dims) {
	n, d, c := dm.N, dm.D, dm.width()
	tensor.RMSNormForward(a.LN1, a.Rstd1, a.In, w.LN1, n, d, dm.Eps)
	tensor.Gemm(false, true, n, 3*c, d, a.LN1, d, w.QKV, d, 0, a.QKV, 3*c)
	if spOf(dm.Comms) > 1 {
		dm.Comms.Attention(a.Att, a.LSE, a.QKV, a.QKV[c:], a.QKV[2*c:], dm.Attn)
	} else {
		tensor.AttentionForward(a.Att, a.LSE, a.QKV, a.QKV[c:], a.QKV[2*c:], dm.Attn)
	}
	if tp, _ := tpOf(dm.Comms); tp > 1 {
		tensor.Gemm(false, true, n, d, c, a.Att, c, w.Proj, c, 0, a.Mid, d)
		sumTP(dm.Comms, a.Mid[:n*d])
		tensor.AddInPlace(a.Mid[:n*d], a.In[:n*d])
		return
	}
	copyPar(a.Mid, a.In[:n*d])
	tensor.Gemm(false, true, n, d, c, a.Att, c, w.Proj, c, 1, a.Mid, d)
}

// AttentionBackward: dres holds ∂L/∂mid on entry and ∂L/∂in on return.
// datt [N, D], dqkv [N, 3C], attD [B·Heads·T] are scratch.
func AttentionBackward(dres []float32, dw LayerWeights, a *LayerActs, w LayerWeights, dm Dims, datt, dqkv, attD []float32) {
	n, d, c := dm.N, dm.D, dm.width()
	tensor.Gemm(true, false, d, c, n, dres, d, a.Att, c, 1, dw.Proj, c)
	tensor.Gemm(false, false, n, c, d, dres, d, w.Proj, c, 0, datt, c)
	zero(dqkv[:n*3*c])
	if spOf(dm.Comms) > 1 {
		dm.Comms.AttentionBackward(dqkv, dqkv[c:], dqkv[2*c:], datt, a.QKV, a.QKV[c:], a.QKV[2*c:], a.Att, a.LSE, dm.Attn)
	} else {
		tensor.AttentionRowDot(attD, datt, a.Att, dm.Attn)
		tensor.AttentionBackward(dqkv, dqkv[c:], dqkv[2*c:], datt, a.QKV, a.QKV[c:], a.QKV[2*c:], a.LSE, attD, dm.Attn)
	}
	tensor.Gemm(true, false, 3*c, d, n, dqkv, 3*c, a.LN1, d, 1, dw.QKV, d)
	dln := datt // reuse: datt is dead now
	tensor.Gemm(false, false, n, d, 3*c, dqkv, 3*c, w.QKV, d, 0, dln, d)
	sumTP(dm.Comms, dln[:n*d])
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
	return moe.Weights{Router: w.Router, W1: w.W1, W2: w.W2, Down: w.Down, Up: w.Up}
}

// HeadForward: lnf = RMSNorm(in), logits = lnf·Headᵀ. vocab is this rank's
// share of the vocabulary rows of Head (all of them unless vocab-parallel).
func HeadForward(lnf, rstd, logits, in []float32, w Weights, dm Dims, vocab int) {
	n, d := dm.N, dm.D
	tensor.RMSNormForward(lnf, rstd, in, w.LNF, n, d, dm.Eps)
	tensor.Gemm(false, true, n, vocab, d, lnf, d, w.Head, d, 0, logits, vocab)
}

// HeadBackward: given dlogits, OVERWRITES dres with ∂L/∂in (the head is the
// first sub-layer of the backward); dln [N, D] is scratch. Vocab-parallel:
// the input gradient of this rank's rows is a partial sum completed over TP.
func HeadBackward(dres []float32, dw Weights, dlogits, lnf, rstd, in []float32, w Weights, dm Dims, vocab int, dln []float32) {
	n, d := dm.N, dm.D
	tensor.Gemm(true, false, vocab, d, n, dlogits, vocab, lnf, d, 1, dw.Head, d)
	tensor.Gemm(false, false, n, d, vocab, dlogits, vocab, w.Head, d, 0, dln, d)
	sumTP(dm.Comms, dln[:n*d])
	zero(dres[:n*d])
	tensor.RMSNormBackward(dres, dw.LNF, dln, in, w.LNF, rstd, n, d)
}
