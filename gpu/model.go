package gpu

import (
	"fmt"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/gpu/ops"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/moe"
)

// layerWeights are one block's tensors inside a flat device buffer.
type layerWeights struct {
	LN1, QKV, Proj, LN2, Router, W1, W2 cuda.DevicePtr
}

// weights are every tensor of a flat device buffer (parameters or
// gradients), at the offsets of the model's Layout.
type weights struct {
	TokEmb, PosEmb cuda.DevicePtr
	Layers         []layerWeights
	LNF, Head      cuda.DevicePtr
}

// views cuts a flat buffer of es-byte elements in layout order.
func views(l model.Layout, base cuda.DevicePtr, layers, es int) weights {
	at := func(name string) cuda.DevicePtr {
		e, ok := l.Lookup(name)
		if !ok {
			panic("gpu: layout has no " + name)
		}
		return base.Add(es * e.Offset)
	}
	w := weights{TokEmb: at("tok_emb"), PosEmb: at("pos_emb"), LNF: at("ln_f"), Head: at("lm_head")}
	for i := 0; i < layers; i++ {
		p := fmt.Sprintf("layers.%d.", i)
		w.Layers = append(w.Layers, layerWeights{LN1: at(p + "ln1"), QKV: at(p + "qkv"), Proj: at(p + "proj"),
			LN2: at(p + "ln2"), Router: at(p + "router"), W1: at(p + "w1"), W2: at(p + "w2")})
	}
	return w
}

// Model is the reference MoE decoder on a GPU: parameters and gradients are
// flat fp32 device buffers in model.Layout order, so a parameter offset
// means the same tensor on the CPU and the GPU. In bf16 mixed precision
// (SetPrecision) the matrix products take bf16 copies of the weights and
// bf16 activations, with fp32 accumulation, an fp32 residual stream, fp32
// routing, and fp32 gradients; fp32 (the default) keeps everything fp32.
// Not safe for concurrent use.
type Model struct {
	Cfg    model.Config
	Layout model.Layout
	Router moe.Router
	// Balance holds the aux-loss-free routing biases on the host (model
	// state that checkpoints save); Forward uploads them.
	Balance *model.RouterState

	dev           *Device
	spec          ops.RouterSpec
	params, grads cuda.DevicePtr
	P, G          weights
	// bf16 mixed precision: act is the activations' and GEMM operands'
	// type, es its size; W are the weights the GEMMs read (P in fp32, the
	// bf16 copy params16 refreshed at every forward in bf16).
	bf16     bool
	act      cuda.DType
	es       int
	params16 cuda.DevicePtr
	W        weights
	// weightsFresh: params16 holds the current parameters (see Update,
	// ParamsWritten).
	weightsFresh bool
	// gradBeta is the weight gradients' products' beta: 1 accumulates
	// (Backward), 0 overwrites (ForwardBackward, which then clears only the
	// gradients no product writes).
	gradBeta float32
	// pending is the optimizer step TrainStep has the backward queue
	// (&update while one runs); groupRanges caches groups().
	pending     *pendingUpdate
	update      pendingUpdate
	groupRanges [][2]int
	bias        cuda.DevicePtr // [Layers·E]
	mem         arena

	acts  *acts
	last  lastForward
	ready bool
}

// newEmpty allocates the parameter, gradient and bias buffers.
func newEmpty(dev *Device, cfg model.Config, layout model.Layout, router moe.Router) (*Model, error) {
	spec, err := ops.RouterSpecOf(router)
	if err != nil {
		return nil, fmt.Errorf("gpu: %w", err)
	}
	m := &Model{Cfg: cfg, Layout: layout, Router: router, Balance: model.NewRouterState(cfg), dev: dev, spec: spec, act: cuda.F32, es: 4}
	m.mem.d = dev
	m.params = m.mem.f32(layout.Total)
	m.grads = m.mem.f32(layout.Total)
	m.bias = m.mem.f32(cfg.Layers * cfg.Experts)
	if m.mem.err != nil {
		m.mem.free()
		return nil, fmt.Errorf("gpu: parameters of %d floats: %w", layout.Total, m.mem.err)
	}
	m.P = views(layout, m.params, cfg.Layers, 4)
	m.G = views(layout, m.grads, cfg.Layers, 4)
	m.W = m.P
	return m, nil
}

// SetPrecision chooses fp32 (bf16 false) or bf16 mixed precision for the
// following steps; it allocates or frees the bf16 weight copy and drops
// the activations (reallocated at the next forward).
func (m *Model) SetPrecision(bf16 bool) error {
	if bf16 == m.bf16 {
		return nil
	}
	if m.acts != nil {
		m.acts.mem.free()
		m.acts = nil
	}
	m.ready = false
	if !bf16 {
		m.dev.free(m.params16, 2*m.Layout.Total)
		m.params16, m.bf16, m.act, m.es, m.W = 0, false, cuda.F32, 4, m.P
		return nil
	}
	p, err := m.dev.alloc(2 * m.Layout.Total)
	if err != nil {
		return fmt.Errorf("gpu: bf16 weights of %d parameters: %w", m.Layout.Total, err)
	}
	m.params16, m.bf16, m.act, m.es, m.weightsFresh = p, true, cuda.BF16, 2, false
	m.W = views(m.Layout, p, m.Cfg.Layers, 2)
	return nil
}

// Precision is "bf16" or "fp32".
func (m *Model) Precision() string {
	if m.bf16 {
		return "bf16"
	}
	return "fp32"
}

// Close frees the model's device memory.
func (m *Model) Close() {
	if m.acts != nil {
		m.acts.mem.free()
		m.acts = nil
	}
	if m.params16 != 0 {
		m.dev.free(m.params16, 2*m.Layout.Total)
		m.params16 = 0
	}
	m.mem.free()
}

// Device is the GPU the model lives on.
func (m *Model) Device() *Device { return m.dev }

// ParamsPtr and GradsPtr are the flat device buffers (Layout.Total floats).
// Writing the parameters through ParamsPtr must be followed by
// ParamsWritten (Update does its own bookkeeping).
func (m *Model) ParamsPtr() cuda.DevicePtr { return m.params }
func (m *Model) GradsPtr() cuda.DevicePtr  { return m.grads }

// SetParams copies host parameters (Layout.Total floats) to the device.
func (m *Model) SetParams(p []float32) error {
	if len(p) != m.Layout.Total {
		return fmt.Errorf("gpu: %d parameters given, layout has %d", len(p), m.Layout.Total)
	}
	m.weightsFresh = false
	return cuda.CopyIn(m.dev.C, m.params, p)
}

// Params copies the device parameters into p (Layout.Total floats).
func (m *Model) Params(p []float32) error {
	if len(p) != m.Layout.Total {
		return fmt.Errorf("gpu: buffer of %d floats for %d parameters", len(p), m.Layout.Total)
	}
	return cuda.CopyOut(m.dev.C, p, m.params)
}

// Grads copies the device gradients of the last backward into g.
func (m *Model) Grads(g []float32) error {
	if len(g) != m.Layout.Total {
		return fmt.Errorf("gpu: buffer of %d floats for %d gradients", len(g), m.Layout.Total)
	}
	return cuda.CopyOut(m.dev.C, g, m.grads)
}

// ZeroGrads clears the gradient buffer.
func (m *Model) ZeroGrads() error { return m.dev.C.Zero(m.dev.Ops.S, m.grads, 4*m.Layout.Total) }

// ForwardBackward sets the gradients to those of in's loss: forward and
// backward, the weight gradients' products overwriting (beta 0) instead of
// clearing the whole buffer first; the embeddings' and norms' gradients,
// which are accumulated, are cleared.
//
// The loss is read after the backward is queued, so the device goes from
// the forward into the backward without waiting for the host.
func (m *Model) ForwardBackward(in model.Input) (model.Result, error) {
	m.ready = false
	if err := in.Validate(m.Cfg); err != nil {
		return model.Result{}, err
	}
	if err := m.forward(in, true); err != nil {
		return model.Result{}, fmt.Errorf("gpu: forward: %w", err)
	}
	m.ready = true
	if err := m.zeroAccumulatedGrads(); err != nil {
		return model.Result{}, err
	}
	m.gradBeta = 0
	if err := m.runBackward(); err != nil {
		return model.Result{}, err
	}
	r, err := m.readStats()
	if err != nil {
		return model.Result{}, fmt.Errorf("gpu: forward: %w", err)
	}
	return r, nil
}

// zeroAccumulatedGrads clears the gradients that the backward accumulates
// rather than writes with a product: the embedding tables and the norms'
// weights.
func (m *Model) zeroAccumulatedGrads() error {
	c, s := m.dev.C, m.dev.Ops.S
	d := m.Cfg.DModel
	zero := func(p cuda.DevicePtr, n int) error { return c.Zero(s, p, 4*n) }
	if err := zero(m.G.TokEmb, m.Cfg.Vocab*d); err != nil {
		return err
	}
	if err := zero(m.G.PosEmb, m.Cfg.SeqLen*d); err != nil {
		return err
	}
	if err := zero(m.G.LNF, d); err != nil {
		return err
	}
	for _, l := range m.G.Layers {
		if err := zero(l.LN1, d); err != nil {
			return err
		}
		if err := zero(l.LN2, d); err != nil {
			return err
		}
	}
	return nil
}

// NewFromHost puts the CPU model cpu (whole, unsharded) on dev: its
// parameters are copied, and the GPU model shares its router-bias state, so
// restoring cpu's biases reaches the GPU model's next forward.
func NewFromHost(dev *Device, cpu *model.Model) (*Model, error) {
	if !cpu.Shard.IsWhole() {
		return nil, fmt.Errorf("gpu: the GPU model is whole; got shard %+v", cpu.Shard)
	}
	m, err := newEmpty(dev, cpu.Cfg, cpu.Layout, cpu.Router)
	if err != nil {
		return nil, err
	}
	m.Balance = cpu.Balance
	if err := m.SetParams(cpu.Params); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}
