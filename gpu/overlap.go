package gpu

import (
	"fmt"
	"os"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/model"
)

// TrainStep is ForwardBackward followed by Update(opt, t, lr, 1), with the
// update of each parameter group queued on the optimizer's own stream as
// soon as the backward has finished the group's gradients (the head and
// final norm first, then each block from the last, then the embeddings):
// AdamW, which only moves memory, runs beside the backward's products and
// attention instead of after them. The parameters, moments and bf16 weights
// come out bitwise as with the separate calls (AdamW is elementwise, and a
// group's weights are not read again in the step once its gradients are
// done). sumSq is Σg², summed per group in a fixed order: equal to Update's
// up to float64 rounding. There is no gradient clipping here (it needs the
// global norm before any update); callers that clip use ForwardBackward,
// GradNorm and Update.
func (m *Model) TrainStep(in model.Input, opt *AdamW, t int, lr float64) (model.Result, float64, error) {
	if opt.n != m.Layout.Total {
		return model.Result{}, 0, fmt.Errorf("gpu: optimizer of %d parameters for a model of %d", opt.n, m.Layout.Total)
	}
	if !overlapFromEnv() {
		r, err := m.ForwardBackward(in)
		if err != nil {
			return r, 0, err
		}
		s, err := m.Update(opt, t, lr, 1)
		return r, s, err
	}
	if err := opt.ensurePartials(len(m.groups())); err != nil {
		return model.Result{}, 0, err
	}
	p := &m.update
	*p = pendingUpdate{opt: opt, t: t, lr: lr, sums: p.sums}
	if len(p.sums) < len(m.groups()) {
		p.sums = make([]float64, len(m.groups()))
	}
	m.pending = p
	defer func() { m.pending = nil }()
	r, err := m.ForwardBackward(in)
	if err == nil {
		err = m.pending.err
	}
	if err == nil && m.pending.groups != len(m.groups()) {
		err = fmt.Errorf("gpu: train step: %d of %d parameter groups updated", m.pending.groups, len(m.groups()))
	}
	if err != nil {
		// Some groups may have moved: the bf16 copy is recast before the
		// next forward, and nothing on the main stream runs past a
		// half-queued update.
		m.weightsFresh = false
		m.dev.join(m.dev.optLane)
		return model.Result{}, 0, err
	}
	if err := m.dev.join(m.dev.optLane); err != nil {
		m.weightsFresh = false
		return model.Result{}, 0, err
	}
	sums := m.pending.sums[:m.pending.groups]
	if err := cuda.CopyOut(m.dev.C, sums, opt.partial); err != nil {
		m.weightsFresh = false
		return model.Result{}, 0, err
	}
	var sumSq float64
	for _, s := range sums {
		sumSq += s
	}
	m.weightsFresh = m.bf16
	return r, sumSq, nil
}

// pendingUpdate is the optimizer step a TrainStep's backward queues group
// by group.
type pendingUpdate struct {
	opt    *AdamW
	t      int
	lr     float64
	groups int       // groups queued so far (the next partial-sum slot)
	err    error     // the first failure to queue one
	sums   []float64 // the groups' Σg², read back (reused step to step)
}

// overlapFromEnv reads MOETRAIN_GPU_OVERLAP_OPTIMIZER: "0" runs the update
// after the backward (for comparison); anything else, or unset, overlaps.
func overlapFromEnv() bool { return os.Getenv("MOETRAIN_GPU_OVERLAP_OPTIMIZER") != "0" }

// groups are the parameter ranges [lo, hi) in the order the backward
// completes their gradients: ln_f and lm_head, each block from the last,
// the embedding tables (computed once: the layout does not change).
func (m *Model) groups() [][2]int {
	if m.groupRanges != nil {
		return m.groupRanges
	}
	l := m.Layout
	start := func(name string) int {
		e, _ := l.Lookup(name)
		return e.Offset
	}
	lnf := start("ln_f")
	out := [][2]int{{lnf, l.Total}}
	for i := m.Cfg.Layers - 1; i >= 0; i-- {
		hi := lnf
		if i+1 < m.Cfg.Layers {
			hi = start(fmt.Sprintf("layers.%d.ln1", i+1))
		}
		out = append(out, [2]int{start(fmt.Sprintf("layers.%d.ln1", i)), hi})
	}
	m.groupRanges = append(out, [2]int{0, start("layers.0.ln1")})
	return m.groupRanges
}

// groupDone queues the pending update of the next group, whose gradients
// the main stream has just finished, on the optimizer's stream. A no-op
// outside TrainStep.
func (m *Model) groupDone() {
	p := m.pending
	if p == nil || p.err != nil {
		return
	}
	g := m.groups()
	if p.groups >= len(g) {
		p.err = fmt.Errorf("gpu: more parameter groups finished than the model has")
		return
	}
	r := g[p.groups]
	d := m.dev
	if p.err = d.C.Record(d.fork, d.Ops.S); p.err != nil {
		return
	}
	if p.err = d.C.Wait(d.optLane.s, d.fork); p.err != nil {
		return
	}
	p16 := cuda.DevicePtr(0)
	if m.bf16 {
		p16 = m.params16
	}
	p.err = p.opt.updateRange(d.optLane, m.params, p16, m.grads, r[0], r[1], p.groups, p.t, p.lr)
	p.groups++
}
