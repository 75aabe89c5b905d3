package gpu

import (
	"fmt"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/moe"
)

// moeForward is moe.Forward for layer l on the device: router scores,
// selection, the dispatch plan, the aux-loss and z-loss statistics, the
// experts as one GEMM pair per expert over its contiguous slots, and the
// gated combine of la.Mid and the experts into la.Out. w are the weights
// the products read (the model's precision).
func (m *Model) moeForward(l int, la *layerActs, w layerWeights, n int, bias cuda.DevicePtr) error {
	cfg, dev := m.Cfg, m.dev
	o := dev.Ops
	a, lf := m.acts, &m.last
	d, e, k, h := cfg.DModel, cfg.Experts, cfg.TopK, cfg.ExpertHidden
	opt := m.Router.Options()
	es := m.es
	if err := m.mm("router", false, true, n, e, d, la.LN2, d, w.Router, d, 0, la.RLogits, e, true); err != nil {
		return err
	}
	if err := o.RouterScores(la.Probs, la.RLogits, n, e, opt.Score); err != nil {
		return err
	}
	if err := o.RouterSelect(la.Experts, la.Gates, la.Probs, bias, n, e, k, m.spec); err != nil {
		return err
	}
	if err := o.PlanBuild(la.Routed, la.Counts, la.Offsets, la.Token, la.SlotGate, la.SlotOf, a.PlanWork,
		la.Experts, la.Gates, la.Probs, n, e, k, opt.Capacity(n, e, k), opt.Drop); err != nil {
		return err
	}
	// Statistics over the counted tokens: the aux loss's (finished on the
	// device, where the backward reads F and the count) and the z-loss's.
	if err := o.RouterAuxStats(la.AuxStats, a.ReduceScratch, la.Probs, la.Experts, a.Mask, n, e, k); err != nil {
		return err
	}
	if err := o.RouterAuxFinish(la.AuxFin, la.AuxStats, e, k); err != nil {
		return err
	}
	if opt.ZLossCoef > 0 {
		if err := o.RouterZLoss(la.ZLSE, la.ZStats, a.ReduceScratch, la.RLogits, a.Mask, n, e); err != nil {
			return err
		}
	}
	// The one wait per layer: the products' sizes. The loss terms and the
	// router's counts are read after the backward is queued (readStats).
	offs := lf.offsets[l]
	if err := cuda.CopyOut(dev.C, offs, la.Offsets); err != nil {
		return err
	}
	s := int(offs[e])
	gather := o.GatherRows
	if m.bf16 {
		gather = o.GatherRowsBF16
	}
	if err := gather(la.X, la.LN2, la.Token, s, d); err != nil {
		return err
	}
	// Each expert's chain (product, GELU, product) on its lane.
	err := dev.fanOut("experts.fwd", e, func(x int, ln *lane) error {
		lo, c := int(offs[x]), int(offs[x+1]-offs[x])
		if c == 0 {
			return nil
		}
		if err := m.mmOn(ln, false, true, c, h, d, la.X.Add(es*lo*d), d, w.W1.Add(es*x*h*d), d, 0, la.Hpre.Add(es*lo*h), h, false); err != nil {
			return err
		}
		gelu := ln.o.GELUForward
		if m.bf16 {
			gelu = ln.o.GELUForwardBF16
		}
		if err := gelu(la.Hact.Add(es*lo*h), la.Hpre.Add(es*lo*h), c*h); err != nil {
			return err
		}
		return m.mmOn(ln, false, true, c, d, h, la.Hact.Add(es*lo*h), h, w.W2.Add(es*x*d*h), h, 0, la.Y.Add(4*lo*d), d, true)
	})
	if err != nil {
		return err
	}
	return o.CombineOnto(la.Out, la.Mid, la.Y, la.SlotOf, la.Gates, n, k, d)
}

// moeBackward is moe.Backward followed by the ln2 RMSNorm backward (as
// model.MoEBackward): a.DRes holds ∂L/∂out on entry and ∂L/∂mid on return.
// p are the fp32 parameters, w the weights the products read, dw the fp32
// gradients.
func (m *Model) moeBackward(l int, la *layerActs, p, w, dw layerWeights) error {
	cfg, dev := m.Cfg, m.dev
	o := dev.Ops
	a, lf := m.acts, &m.last
	n := lf.n
	d, e, k, h := cfg.DModel, cfg.Experts, cfg.TopK, cfg.ExpertHidden
	opt := m.Router.Options()
	offs := lf.offsets[l]
	s := int(offs[e])
	dln := a.DTmp
	if err := dev.C.Zero(o.S, dln, 4*n*d); err != nil {
		return err
	}
	// Gradient of the combine: dY = dout gathered per slot; the gate's
	// gradient is dY·Y; then dY is scaled by the gate (one fused pass
	// writing bf16 dY in mixed precision).
	es := m.es
	if m.bf16 {
		if err := o.GatherDotScaleBF16(a.DYLow, a.DSlotGate, a.DRes, la.Token, la.Y, la.SlotGate, s, d); err != nil {
			return err
		}
	} else {
		if err := o.GatherRows(a.DY, a.DRes, la.Token, s, d); err != nil {
			return err
		}
		if err := o.RowDot(a.DSlotGate, a.DY, la.Y, s, d); err != nil {
			return err
		}
		if err := o.ScaleRows(a.DY, la.SlotGate, s, d); err != nil {
			return err
		}
	}
	// Each expert's chain (the W2 products, GELU's backward, the W1
	// products) on its lane.
	err := dev.fanOut("experts.bwd", e, func(x int, ln *lane) error {
		lo, c := int(offs[x]), int(offs[x+1]-offs[x])
		if c == 0 {
			if m.gradBeta == 0 { // no product writes this expert's gradients
				if err := dev.C.Zero(ln.s, dw.W1.Add(4*x*h*d), 4*h*d); err != nil {
					return err
				}
				return dev.C.Zero(ln.s, dw.W2.Add(4*x*d*h), 4*d*h)
			}
			return nil
		}
		if err := m.mmOn(ln, true, false, d, h, c, a.DYLow.Add(es*lo*d), d, la.Hact.Add(es*lo*h), h, m.gradBeta, dw.W2.Add(4*x*d*h), h, true); err != nil {
			return err
		}
		// dHact in the model's precision (bf16 in mixed precision).
		if err := m.mmOn(ln, false, false, c, h, d, a.DYLow.Add(es*lo*d), d, w.W2.Add(es*x*d*h), h, 0, a.DHact.Add(es*lo*h), h, false); err != nil {
			return err
		}
		rows := func(p cuda.DevicePtr) cuda.DevicePtr { return p.Add(es * lo * h) }
		if m.bf16 {
			if err := ln.o.GELUBackwardBF16Out(rows(a.DHpreLow), rows(a.DHact), rows(la.Hpre), c*h); err != nil {
				return err
			}
		} else {
			if err := dev.C.Zero(ln.s, rows(a.DHpre), 4*c*h); err != nil {
				return err
			}
			if err := ln.o.GELUBackward(rows(a.DHpre), rows(a.DHact), rows(la.Hpre), c*h); err != nil {
				return err
			}
		}
		if err := m.mmOn(ln, true, false, h, d, c, a.DHpreLow.Add(es*lo*h), h, la.X.Add(es*lo*d), d, m.gradBeta, dw.W1.Add(4*x*h*d), d, true); err != nil {
			return err
		}
		return m.mmOn(ln, false, false, c, d, h, a.DHpreLow.Add(es*lo*h), h, w.W1.Add(es*x*h*d), d, 0, a.DX.Add(4*lo*d), d, true)
	})
	if err != nil {
		return err
	}
	if err := o.CombineBackward(dln, a.DX, la.SlotOf, n, k, d); err != nil {
		return err
	}
	if err := o.SlotGradsToChoices(a.DGates, a.DSlotGate, la.SlotOf, n*k); err != nil {
		return err
	}
	if err := dev.C.Zero(o.S, a.DProbs, 4*n*e); err != nil {
		return err
	}
	if err := o.RouterBackward(a.DProbs, a.DGates, la.Probs, la.Experts, la.Gates, n, e, k, m.spec); err != nil {
		return err
	}
	if lf.count > 0 && cfg.AuxCoef != 0 { // the aux loss counts the counted tokens

		if err := o.RouterAuxBackward(a.DProbs, la.AuxFin, a.Mask, n, e, cfg.AuxCoef); err != nil {
			return err
		}
	}
	if err := dev.C.Zero(o.S, a.DRLogits, 4*n*e); err != nil {
		return err
	}
	if err := o.RouterScoresBackward(a.DRLogits, a.DProbs, la.Probs, n, e, opt.Score); err != nil {
		return err
	}
	if opt.ZLossCoef > 0 {
		if err := o.RouterZLossBackward(a.DRLogits, la.RLogits, la.ZLSE, la.ZStats, a.Mask, n, e, opt.ZLossCoef); err != nil {
			return err
		}
	}
	if err := m.lowp(a.DRLogitsLow, a.DRLogits, n*e); err != nil {
		return err
	}
	if err := m.mm("router.dW", true, false, e, d, n, a.DRLogitsLow, e, la.LN2, d, m.gradBeta, dw.Router, d, true); err != nil {
		return err
	}
	if err := m.mm("router.dX", false, false, n, d, e, a.DRLogitsLow, e, w.Router, d, 1, dln, d, true); err != nil {
		return err
	}
	return o.RMSNormBackward(a.DRes, dw.LN2, dln, la.Mid, p.LN2, la.Rstd2, a.NormScratch, n, d)
}

// RoutedLoad returns, per layer, the slots the router sent to each expert
// in the last forward, before capacity (as model.Model.RoutedLoad).
func (m *Model) RoutedLoad() [][]int {
	if m.acts == nil {
		return nil
	}
	out := make([][]int, m.Cfg.Layers)
	for l := range out {
		out[l] = make([]int, m.Cfg.Experts)
		for x, v := range m.last.routed[l] {
			out[l][x] = int(v)
		}
	}
	return out
}

// RouterStats returns each layer's load metrics of the last forward for
// expert-parallel degree ep (as model.Model.RouterStats).
func (m *Model) RouterStats(ep int) ([]moe.LoadStats, error) {
	if m.acts == nil {
		return nil, fmt.Errorf("gpu: router stats before any forward")
	}
	e, k, n := m.Cfg.Experts, m.Cfg.TopK, m.last.n
	out := make([]moe.LoadStats, m.Cfg.Layers)
	counts := make([]int, e)
	for l := range out {
		offs := m.last.offsets[l]
		for x := range counts {
			counts[x] = int(offs[x+1] - offs[x])
		}
		s, err := moe.NewLoadStats(counts, n, n*k, n*k-int(offs[e]), ep)
		if err != nil {
			return nil, fmt.Errorf("gpu: layer %d: %w", l, err)
		}
		out[l] = s
	}
	return out, nil
}
