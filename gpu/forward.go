package gpu

import (
	"fmt"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/tensor"
)

// lastForward is what the host keeps of the last forward: the batch, the
// plan sizes each layer's expert GEMMs need, and the statistics behind the
// loss and the router metrics.
type lastForward struct {
	in      model.Input
	n       int
	count   int // counted (non-ignored) targets
	attn    tensor.AttnShape
	offsets [][]int32 // [layer][E+1] slot offsets per expert
	routed  [][]int32 // [layer][E] router choices per expert before capacity
	aux     []float64 // [layer] aux loss
	zloss   []float64 // [layer] z-loss value
	// index is the embedding backward's host scratch: order, unique,
	// starts of one table's index (reused step to step); distinct counts
	// the distinct token and position ids of the batch.
	index    [3][]int32
	distinct [2]int
	mask     []uint8 // the counted-token mask's host buffer (reused)
}

// Forward runs the model on in, with the same result as model.Model's
// Forward up to float summation order. With wantGrad the state Backward
// needs is kept. The host waits for the device once per MoE layer (the
// expert GEMMs' sizes) and once at the end (the loss).
func (m *Model) Forward(in model.Input, wantGrad bool) (model.Result, error) {
	m.ready = false
	if err := in.Validate(m.Cfg); err != nil {
		return model.Result{}, err
	}
	if err := m.forward(in, wantGrad); err != nil {
		return model.Result{}, fmt.Errorf("gpu: forward: %w", err)
	}
	r, err := m.readStats()
	if err != nil {
		return model.Result{}, fmt.Errorf("gpu: forward: %w", err)
	}
	m.ready = wantGrad
	return r, nil
}

// forward queues the forward of in; the host waits only for each MoE
// layer's plan offsets. readStats collects the loss afterwards.
func (m *Model) forward(in model.Input, wantGrad bool) error {
	cfg, dev := m.Cfg, m.dev
	o := dev.Ops
	n, d := in.B*in.T, cfg.DModel
	if m.acts == nil || m.acts.cap < n {
		if m.acts != nil {
			m.acts.mem.free()
			m.acts = nil
		}
		a, err := m.newActs(n)
		if err != nil {
			return err
		}
		m.acts = a
	}
	a := m.acts
	lf := &m.last
	lf.in, lf.n = in, n
	lf.attn = model.AttnShape(cfg, in.B, in.T, in.Seg) // segments also travel as device arrays
	// The counted-token mask is one byte per token (the router statistics'
	// convention).
	if cap(lf.mask) < n {
		lf.mask = make([]uint8, n)
	}
	mask := lf.mask[:n]
	clear(mask)
	lf.count = 0
	for i, t := range in.Targets {
		if t >= 0 {
			mask[i] = 1
			lf.count++
		}
	}
	if err := cuda.CopyIn(dev.C, a.Mask, mask); err != nil {
		return err
	}
	for _, up := range []struct {
		p cuda.DevicePtr
		s []int32
	}{{a.Tokens, in.Tokens}, {a.Pos, in.Pos}, {a.Targets, in.Targets}} {
		if err := cuda.CopyIn(dev.C, up.p, up.s); err != nil {
			return err
		}
	}
	if wantGrad {
		if err := m.uploadEmbedIndex(); err != nil {
			return err
		}
	}
	seg := cuda.DevicePtr(0)
	if in.Seg != nil {
		if err := cuda.CopyIn(dev.C, a.Seg, in.Seg); err != nil {
			return err
		}
		seg = a.Seg
	}
	biased := m.Balance.Rate != 0 || anyNonZero(m.Balance.Flat)
	if biased {
		if err := cuda.CopyIn(dev.C, m.bias, m.Balance.Flat); err != nil {
			return err
		}
	}
	if err := o.EmbedForward(a.Res0, a.Tokens, a.Pos, m.P.TokEmb, m.P.PosEmb, n, d, cfg.Vocab, cfg.SeqLen); err != nil {
		return err
	}
	e := cfg.Experts
	grow := func(s [][]int32, w int) [][]int32 {
		for len(s) < cfg.Layers {
			s = append(s, make([]int32, w))
		}
		return s
	}
	lf.offsets, lf.routed = grow(lf.offsets, e+1), grow(lf.routed, e)
	if len(lf.aux) < cfg.Layers {
		lf.aux, lf.zloss = make([]float64, cfg.Layers), make([]float64, cfg.Layers)
	}
	if err := m.refreshWeights(); err != nil {
		return err
	}
	es := m.es
	for l := range a.Layers {
		la, w, ww := &a.Layers[l], m.P.Layers[l], m.W.Layers[l]
		// Attention sub-layer.
		if err := m.norm(la.LN1, la.Rstd1, la.In, w.LN1, n); err != nil {
			return err
		}
		if err := m.mm("qkv", false, true, n, 3*d, d, la.LN1, d, ww.QKV, d, 0, la.QKV, 3*d, false); err != nil {
			return err
		}
		q, k, v := la.QKV, la.QKV.Add(es*d), la.QKV.Add(2*es*d)
		attn := o.AttentionForward
		if m.bf16 {
			attn = o.AttentionForwardBF16
		}
		if err := attn(la.Att, la.LSE, q, k, v, lf.attn, seg, seg); err != nil {
			return err
		}
		// Mid = In + Att·Projᵀ, the residual read by the product.
		if err := m.mmResidual("proj", false, true, n, d, d, la.Att, d, ww.Proj, d, la.In, la.Mid, d); err != nil {
			return err
		}
		// MoE sub-layer.
		if err := m.norm(la.LN2, la.Rstd2, la.Mid, w.LN2, n); err != nil {
			return err
		}
		bias := cuda.DevicePtr(0)
		if biased {
			bias = m.bias.Add(4 * l * e)
		}
		if err := m.moeForward(l, la, ww, n, bias); err != nil {
			return fmt.Errorf("layer %d: %w", l, err)
		}
	}
	last := a.Layers[len(a.Layers)-1].Out
	if err := m.norm(a.LNF, a.RstdF, last, m.P.LNF, n); err != nil {
		return err
	}
	v := cfg.Vocab
	if err := m.mm("head", false, true, n, v, d, a.LNF, d, m.W.Head, d, 0, a.Logits, v, false); err != nil {
		return err
	}
	dlogits, scale := cuda.DevicePtr(0), float32(0)
	if wantGrad {
		dlogits = a.DLogits
		if lf.count > 0 {
			scale = 1 / float32(lf.count)
		}
	}
	ce := o.CrossEntropy
	if m.bf16 {
		ce = o.CrossEntropyBF16
	}
	if err := ce(a.Losses, dlogits, a.Logits, a.Targets, n, v, scale, a.CESum); err != nil {
		return err
	}
	return nil
}

// readStats waits for the device and reads the last forward's loss terms
// and router counts into a Result.
func (m *Model) readStats() (model.Result, error) {
	cfg, dev, a, lf := m.Cfg, m.dev, m.acts, &m.last
	var ceSum [2]float64
	if err := cuda.CopyOut(dev.C, ceSum[:], a.CESum); err != nil {
		return model.Result{}, err
	}
	e := cfg.Experts
	for l := range a.Layers {
		la := &a.Layers[l]
		var fin [2]float64 // value, count
		if err := cuda.CopyOut(dev.C, fin[:], la.AuxFin.Add(8*2*e)); err != nil {
			return model.Result{}, err
		}
		lf.aux[l], lf.zloss[l] = fin[0], 0
		if cfg.ZLossCoef > 0 {
			var z [3]float64
			if err := cuda.CopyOut(dev.C, z[:], la.ZStats); err != nil {
				return model.Result{}, err
			}
			lf.zloss[l] = z[2]
		}
		if err := cuda.CopyOut(dev.C, lf.routed[l], la.Routed); err != nil {
			return model.Result{}, err
		}
	}
	r := model.Result{Targets: lf.count}
	if lf.count > 0 {
		r.CE = ceSum[0] / float64(lf.count)
	}
	for l := range a.Layers {
		r.Aux += lf.aux[l]
		r.ZLoss += lf.zloss[l]
	}
	r.Loss = r.CE + cfg.AuxCoef*r.Aux
	if cfg.ZLossCoef > 0 {
		r.Loss += cfg.ZLossCoef * r.ZLoss
	} else {
		r.ZLoss = 0
	}
	return r, nil
}

// norm is RMSNorm of the fp32 rows in into out in the model's precision.
func (m *Model) norm(out, rstd, in, w cuda.DevicePtr, n int) error {
	d, o := m.Cfg.DModel, m.dev.Ops
	eps := float32(m.Cfg.NormEps)
	if !m.bf16 {
		return o.RMSNormForward(out, rstd, in, w, n, d, eps)
	}
	return o.RMSNormForwardF32BF16(out, rstd, in, w, n, d, eps)
}

func anyNonZero(s []float32) bool {
	for _, v := range s {
		if v != 0 {
			return true
		}
	}
	return false
}
