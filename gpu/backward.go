package gpu

import (
	"fmt"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/gpu/ops"
)

// Backward accumulates the gradient of the last Forward(…, true)'s loss into
// the device gradients, in model.Model.Backward's order.
func (m *Model) Backward() error {
	m.gradBeta = 1
	return m.runBackward()
}

func (m *Model) runBackward() error {
	if !m.ready {
		return fmt.Errorf("gpu: Backward without a preceding Forward(wantGrad=true)")
	}
	m.ready = false
	if err := m.backward(); err != nil {
		return fmt.Errorf("gpu: backward: %w", err)
	}
	return nil
}

func (m *Model) backward() error {
	cfg, dev := m.Cfg, m.dev
	o := dev.Ops
	a, lf := m.acts, &m.last
	n, d, v := lf.n, cfg.DModel, cfg.Vocab
	last := a.Layers[len(a.Layers)-1].Out
	// Head: dHead += dlogitsᵀ·lnf; dln = dlogits·Head; dres = RMSNorm'.
	if err := m.mm("head.dW", true, false, v, d, n, a.DLogits, v, a.LNF, d, m.gradBeta, m.G.Head, d, true); err != nil {
		return err
	}
	if err := m.mm("head.dX", false, false, n, d, v, a.DLogits, v, m.W.Head, d, 0, a.DTmp, d, true); err != nil {
		return err
	}
	if err := dev.C.Zero(o.S, a.DRes, 4*n*d); err != nil {
		return err
	}
	if err := o.RMSNormBackward(a.DRes, m.G.LNF, a.DTmp, last, m.P.LNF, a.RstdF, a.NormScratch, n, d); err != nil {
		return err
	}
	m.groupDone() // ln_f, lm_head
	seg := cuda.DevicePtr(0)
	if lf.in.Seg != nil {
		seg = a.Seg
	}
	es := m.es
	rowDot, attnBack := o.AttentionRowDot, o.AttentionBackward
	if m.bf16 {
		rowDot = o.AttentionRowDotBF16
	}
	for l := len(a.Layers) - 1; l >= 0; l-- {
		la, p, w, dw := &a.Layers[l], m.P.Layers[l], m.W.Layers[l], m.G.Layers[l]
		if err := m.moeBackward(l, la, p, w, dw); err != nil {
			return fmt.Errorf("layer %d: %w", l, err)
		}
		// Attention: dProj += dresᵀ·att; datt = dres·Proj; attention
		// backward into dqkv (fp32, or bf16 in mixed precision); dQKV +=
		// dqkvᵀ·ln1; dln = dqkv·QKV; RMSNorm'.
		if err := m.lowp(a.DResLow, a.DRes, n*d); err != nil {
			return err
		}
		if err := m.mm("proj.dW", true, false, d, d, n, a.DResLow, d, la.Att, d, m.gradBeta, dw.Proj, d, true); err != nil {
			return err
		}
		datt := a.DAtt
		if err := m.mm("proj.dX", false, false, n, d, d, a.DResLow, d, w.Proj, d, 0, datt, d, false); err != nil {
			return err
		}
		if err := rowDot(a.AttD, datt, la.Att, lf.attn); err != nil {
			return err
		}
		q, k, vv := la.QKV, la.QKV.Add(es*d), la.QKV.Add(2*es*d)
		if m.bf16 {
			// dQKV straight to bf16 (overwritten), the products' operand.
			err := o.AttentionBackwardBF16Out(a.DQKVLow, a.DQKVLow.Add(2*d), a.DQKVLow.Add(4*d), datt, q, k, vv, la.LSE, a.AttD, lf.attn, seg, seg)
			if err != nil {
				return err
			}
		} else {
			if err := dev.C.Zero(o.S, a.DQKV, 4*n*3*d); err != nil {
				return err
			}
			if err := attnBack(a.DQKV, a.DQKV.Add(4*d), a.DQKV.Add(8*d), datt, q, k, vv, la.LSE, a.AttD, lf.attn, seg, seg); err != nil {
				return err
			}
		}
		if err := m.mm("qkv.dW", true, false, 3*d, d, n, a.DQKVLow, 3*d, la.LN1, d, m.gradBeta, dw.QKV, d, true); err != nil {
			return err
		}
		dln := a.DTmp // datt is dead now
		if err := m.mm("qkv.dX", false, false, n, d, 3*d, a.DQKVLow, 3*d, w.QKV, d, 0, dln, d, true); err != nil {
			return err
		}
		if err := o.RMSNormBackward(a.DRes, dw.LN1, dln, la.In, p.LN1, la.Rstd1, a.NormScratch, n, d); err != nil {
			return err
		}
		m.groupDone() // block l
	}
	if err := m.embedBackward(); err != nil {
		return err
	}
	m.groupDone() // the embedding tables
	return nil
}

// embedBackward accumulates dres into the token and position tables'
// gradients, summing each id's rows in position order (deterministic), with
// the index uploadEmbedIndex built for the batch.
func (m *Model) embedBackward() error {
	a, lf := m.acts, &m.last
	n, d := lf.n, m.Cfg.DModel
	for i, t := range []struct {
		vocab                 int
		order, unique, starts cuda.DevicePtr
		table                 cuda.DevicePtr
	}{
		{m.Cfg.Vocab, a.TokOrder, a.TokUnique, a.TokStarts, m.G.TokEmb},
		{m.Cfg.SeqLen, a.PosOrder, a.PosUnique, a.PosStarts, m.G.PosEmb},
	} {
		if err := m.dev.Ops.EmbeddingBackward(t.table, t.order, t.unique, t.starts, a.DRes, lf.distinct[i], n, d, t.vocab); err != nil {
			return err
		}
	}
	return nil
}

// uploadEmbedIndex builds the embedding backward's index of the batch's
// token and position ids (a stable sort of positions by id, on the host,
// which holds the batch) and copies it to the device. The forward does it
// while the device is idle anyway: a copy from host memory waits for the
// device's queue, so in the backward it would stall the device.
func (m *Model) uploadEmbedIndex() error {
	dev, a, lf := m.dev, m.acts, &m.last
	n := lf.n
	for i, t := range []struct {
		ids                   []int32
		vocab                 int
		order, unique, starts cuda.DevicePtr
	}{
		{lf.in.Tokens, m.Cfg.Vocab, a.TokOrder, a.TokUnique, a.TokStarts},
		{lf.in.Pos, m.Cfg.SeqLen, a.PosOrder, a.PosUnique, a.PosStarts},
	} {
		if cap(lf.index[0]) < n {
			lf.index = [3][]int32{make([]int32, n), make([]int32, n), make([]int32, n+1)}
		}
		order, unique, starts := lf.index[0][:n], lf.index[1][:n], lf.index[2][:n+1]
		u, err := ops.EmbeddingIndex(t.ids, t.vocab, order, unique, starts)
		if err != nil {
			return err
		}
		if err := cuda.CopyIn(dev.C, t.order, order); err != nil {
			return err
		}
		if err := cuda.CopyIn(dev.C, t.unique, unique[:u]); err != nil {
			return err
		}
		if err := cuda.CopyIn(dev.C, t.starts, starts[:u+1]); err != nil {
			return err
		}
		lf.distinct[i] = u
	}
	return nil
}
