package model

import (
	"fmt"

	"github.com/moetrain/moetrain/moe"
	"github.com/moetrain/moetrain/tensor"
)

// Input is one batch as the model sees it: B rows of T tokens (row r is
// elements [r·T, (r+1)·T)). Targets < 0 are ignored by the loss; Pos indexes
// the position table; Seg (optional) keeps attention inside documents.
type Input struct {
	B, T    int
	Tokens  []int32
	Targets []int32
	Pos     []int32
	Seg     []int32
}

// Validate checks sizes and ranges against cfg.
func (in Input) Validate(cfg Config) error {
	if in.B < 1 || in.T < 1 {
		return fmt.Errorf("model: batch shape B=%d T=%d: both must be >= 1", in.B, in.T)
	}
	if in.T > cfg.SeqLen {
		return fmt.Errorf("model: batch T=%d exceeds model.seq_len=%d (position table size)", in.T, cfg.SeqLen)
	}
	n := in.B * in.T
	for _, f := range []struct {
		name string
		s    []int32
		hi   int
		opt  bool
		neg  bool
	}{
		{"tokens", in.Tokens, cfg.Vocab, false, false},
		{"targets", in.Targets, cfg.Vocab, false, true},
		{"pos", in.Pos, cfg.SeqLen, false, false},
		{"seg", in.Seg, -1, true, true},
	} {
		if f.opt && f.s == nil {
			continue
		}
		if len(f.s) != n {
			return fmt.Errorf("model: batch %s has %d entries, want B·T = %d", f.name, len(f.s), n)
		}
		for i, v := range f.s {
			if (v < 0 && !f.neg) || (f.hi >= 0 && int(v) >= f.hi) {
				return fmt.Errorf("model: batch %s[%d] (row %d, column %d) = %d out of range [0, %d)", f.name, i, i/in.T, i%in.T, v, f.hi)
			}
		}
	}
	return nil
}

// Result is the loss of one forward pass.
type Result struct {
	Loss    float64 // CE + AuxCoef·Aux
	CE      float64 // mean cross-entropy over counted targets
	Aux     float64 // Σ over layers of the aux loss (unweighted)
	ZLoss   float64 // Σ over layers of the router z-loss (unweighted; 0 when z_loss_coef = 0)
	Targets int     // counted (non-ignored) targets
}

// Model is the serial MoE decoder with its flat parameter and gradient
// buffers and reusable activations. Not safe for concurrent use.
type Model struct {
	Cfg    Config
	Layout Layout
	Params []float32
	Grads  []float32
	P, G   Weights // views into Params and Grads
	Router moe.Router
	// Balance holds the aux-loss-free routing biases (selection only); its
	// Flat buffer is model state that checkpoints save.
	Balance *RouterState

	// OnGradsReady, when set, is called during Backward each time a
	// contiguous range [lo, hi) of Grads is final for this backward pass.
	// Ranges arrive in decreasing order, are contiguous (each one's hi is the
	// previous one's lo) and together cover [0, Layout.Total) exactly once per
	// Backward, on entry boundaries of the layout. The callback runs on the
	// backward's goroutine and must not write Grads inside [0, lo) nor keep
	// Backward waiting long: data-parallel reducers start communication from
	// it so that it overlaps the rest of the backward. nil costs nothing.
	OnGradsReady func(lo, hi int)

	// marks[l] = {ln1, ln2, end} offsets of layer l's entries: the ranges the
	// backward finalises (see OnGradsReady).
	marks [][3]int

	acts  *Acts
	in    Input
	dims  Dims
	count int // counted targets of the last forward
	ready bool
}

// New builds the model with parameters initialised from seed.
func New(cfg Config, seed uint64) (*Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	router, err := NewRouter(cfg)
	if err != nil {
		return nil, err
	}
	m := &Model{Cfg: cfg, Layout: NewLayout(cfg), Router: router, Balance: NewRouterState(cfg)}
	m.Params = make([]float32, m.Layout.Total)
	m.Grads = make([]float32, m.Layout.Total)
	m.P, m.G = m.Layout.Views(m.Params), m.Layout.Views(m.Grads)
	m.Layout.InitParams(m.Params, cfg.InitStd, seed)
	// A layer's entries run from its ln1 to the next layer's ln1 (ln_f after
	// the last layer); the MoE half starts at ln2.
	m.marks = make([][3]int, cfg.Layers)
	for l := range m.marks {
		p := fmt.Sprintf("layers.%d.", l)
		ln1, _ := m.Layout.Lookup(p + "ln1")
		ln2, _ := m.Layout.Lookup(p + "ln2")
		m.marks[l] = [3]int{ln1.Offset, ln2.Offset, 0}
		if l > 0 {
			m.marks[l-1][2] = ln1.Offset
		}
	}
	lnf, _ := m.Layout.Lookup("ln_f")
	m.marks[cfg.Layers-1][2] = lnf.Offset
	return m, nil
}

// ZeroGrads clears the gradient buffer.
func (m *Model) ZeroGrads() { zero(m.Grads) }

// Forward runs the model on in. With wantGrad the loss gradient with respect
// to the logits is kept for Backward.
func (m *Model) Forward(in Input, wantGrad bool) (Result, error) {
	if err := in.Validate(m.Cfg); err != nil {
		return Result{}, err
	}
	cfg := m.Cfg
	n, d, v := in.B*in.T, cfg.DModel, cfg.Vocab
	if m.acts == nil || m.acts.Cap < n {
		m.acts = newActs(cfg, n)
	}
	a := m.acts
	m.in = in
	m.dims = Dims{N: n, D: d, Heads: cfg.Heads, Eps: float32(cfg.NormEps), Attn: AttnShape(cfg, in.B, in.T, in.Seg)}
	count := 0
	for i, t := range in.Targets {
		a.Mask[i] = t >= 0
		if t >= 0 {
			count++
		}
	}
	m.count = count
	md := moeDims(cfg)
	EmbedForward(a.Res0[:n*d], a.DTmp[:n*d], in.Tokens, in.Pos, m.P.TokEmb, m.P.PosEmb, d)
	var aux float64
	mask := a.Mask[:n]
	for l := range a.Layers {
		la := &a.Layers[l]
		la.MoE.Resize(md, n)
		AttentionForward(la, m.P.Layers[l], m.dims)
		la.MoE.Bias = m.Balance.Layer(l)
		MoEForward(la, m.P.Layers[l], m.dims, md, m.Router, mask)
		aux += la.MoE.Aux.Value
	}
	last := a.Layers[len(a.Layers)-1].Out
	HeadForward(a.LNF, a.RstdF, a.Logits, last, m.P, m.dims, v)
	var dlogits []float32
	scale := float32(0)
	if wantGrad {
		dlogits = a.DLogits[:n*v]
		if count > 0 {
			scale = 1 / float32(count)
		}
	}
	sum, _ := tensor.CrossEntropy(a.Losses[:n], dlogits, a.Logits[:n*v], in.Targets, n, v, scale)
	r := Result{Aux: aux, Targets: count}
	if count > 0 {
		r.CE = sum / float64(count)
	}
	r.Loss = r.CE + cfg.AuxCoef*aux
	if cfg.ZLossCoef > 0 {
		r.ZLoss = m.RouterZLoss()
		r.Loss += cfg.ZLossCoef * r.ZLoss
	}
	m.ready = wantGrad
	return r, nil
}

// Backward accumulates the gradient of the last Forward(…, true)'s loss into
// Grads.
func (m *Model) Backward() error {
	if !m.ready {
		return fmt.Errorf("model: Backward without a preceding Forward(wantGrad=true)")
	}
	m.ready = false
	cfg, a, dm := m.Cfg, m.acts, m.dims
	md := moeDims(cfg)
	mask := a.Mask[:dm.N]
	last := a.Layers[len(a.Layers)-1].Out
	HeadBackward(a.DRes, m.G, a.DLogits, a.LNF, a.RstdF, last, m.P, dm, cfg.Vocab, a.DTmp)
	// The head writes ln_f and lm_head, which follow the last layer.
	m.gradsReady(m.marks[len(m.marks)-1][2], m.Layout.Total)
	for l := len(a.Layers) - 1; l >= 0; l-- {
		la := &a.Layers[l]
		MoEBackward(a.DRes, m.G.Layers[l], la, m.P.Layers[l], dm, md, m.Router, mask, cfg.AuxCoef, a.DTmp, &a.MoE)
		m.gradsReady(m.marks[l][1], m.marks[l][2]) // ln2 … w2
		AttentionBackward(a.DRes, m.G.Layers[l], la, m.P.Layers[l], dm, a.DTmp, a.DQKV, a.AttD)
		m.gradsReady(m.marks[l][0], m.marks[l][1]) // ln1, qkv, proj
	}
	EmbedBackward(m.G.TokEmb, m.G.PosEmb, a.DRes[:dm.N*dm.D], m.in.Tokens, m.in.Pos, dm.D)
	m.gradsReady(0, m.marks[0][0]) // tok_emb, pos_emb
	return nil
}

func (m *Model) gradsReady(lo, hi int) {
	if m.OnGradsReady != nil {
		m.OnGradsReady(lo, hi)
	}
}

// ForwardBackward zeroes the gradients, runs forward and backward.
func (m *Model) ForwardBackward(in Input) (Result, error) {
	m.ZeroGrads()
	r, err := m.Forward(in, true)
	if err != nil {
		return r, err
	}
	return r, m.Backward()
}

// CheckFinite returns an error naming the first non-finite parameter.
func (m *Model) CheckFinite() error {
	if err := m.Layout.checkFinite(m.Params); err != nil {
		return fmt.Errorf("model: non-finite parameter %w", err)
	}
	return nil
}
