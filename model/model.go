package model

import (
	"fmt"
	"math"

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
	// Shard is the slice of the model this rank holds (Whole serially);
	// Layout, Params and Grads are that slice's.
	Shard Shard
	// Comms (nil = serial) is the parallel plan's communication; set it
	// before the first Forward of a sharded model.
	Comms Comms

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
func New(cfg Config, seed uint64) (*Model, error) { return NewSharded(cfg, Whole, seed) }

// NewSharded builds the part sh of the model, initialised to exactly the
// values the whole model's New(cfg, seed) gives those parameters.
func NewSharded(cfg Config, sh Shard, seed uint64) (*Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	sh = sh.norm()
	layout, err := NewShardLayout(cfg, sh)
	if err != nil {
		return nil, err
	}
	router, err := NewRouter(cfg)
	if err != nil {
		return nil, err
	}
	m := &Model{Cfg: cfg, Layout: layout, Router: router, Balance: NewRouterState(cfg), Shard: sh}
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
// to the logits is kept for Backward. With Comms, in is this rank's share of
// the step's tokens and the result is the global one (identical on every
// rank): CE over every rank's targets, aux and z-loss on global statistics.
func (m *Model) Forward(in Input, wantGrad bool) (Result, error) {
	if err := in.Validate(m.Cfg); err != nil {
		return Result{}, err
	}
	cm := m.Comms
	if !m.Shard.IsWhole() && cm == nil {
		return Result{}, fmt.Errorf("model: a sharded model (%+v) needs Comms", m.Shard)
	}
	sp := spOf(cm)
	if sp > 1 && (in.T%2 != 0 || in.Seg != nil) {
		return Result{}, fmt.Errorf("model: sequence parallelism needs local rows in two zigzag chunks (even T, got %d) and no document segments", in.T)
	}
	cfg := m.Cfg
	tp, tpRank := tpOf(cm)
	n, d := in.B*in.T, cfg.DModel
	vl := cfg.Vocab / tp
	if m.acts == nil || m.acts.Cap < n {
		m.acts = newActs(cfg, m.Shard, n)
	}
	a := m.acts
	m.in = in
	heads := cfg.Heads / tp
	m.dims = Dims{N: n, D: d, C: heads * cfg.HeadDim(), Heads: heads, Eps: float32(cfg.NormEps),
		Attn: localAttnShape(heads, cfg.HeadDim(), in.B, in.T, in.Seg), Comms: cm}
	count := 0
	for i, t := range in.Targets {
		a.Mask[i] = t >= 0
		if t >= 0 {
			count++
		}
	}
	global := count
	if cm != nil {
		c := []float32{float32(count)} // < 2^24 targets per step: exact
		cm.SumTokens(c)
		global = int(c[0])
	}
	m.count = global
	md := m.moeDims()
	static := staticSplit(cm, m.Router)
	EmbedForward(a.Res0[:n*d], a.DTmp[:n*d], in.Tokens, in.Pos, m.P.TokEmb, m.P.PosEmb, d)
	mask := a.Mask[:n]
	for l := range a.Layers {
		la := &a.Layers[l]
		la.MoE.Resize(md, n)
		AttentionForward(la, m.P.Layers[l], m.dims)
		la.MoE.Bias = m.Balance.Layer(l)
		if cm != nil {
			la.MoE.Ex, la.MoE.DeferStats, la.MoE.StaticSplit = cm, true, static
		}
		MoEForward(la, m.P.Layers[l], m.dims, md, m.Router, mask)
	}
	last := a.Layers[len(a.Layers)-1].Out
	HeadForward(a.LNF, a.RstdF, a.Logits, last, m.P, m.dims, vl)
	var dlogits []float32
	scale := float32(0)
	if wantGrad {
		dlogits = a.DLogits[:n*vl]
		if global > 0 {
			scale = 1 / float32(global)
		}
	}
	var sum float64
	if tp == 1 {
		sum, _ = tensor.CrossEntropy(a.Losses[:n], dlogits, a.Logits[:n*vl], in.Targets, n, vl, scale)
	} else {
		sum = m.vocabParallelCE(dlogits, in.Targets, n, vl, tp, tpRank, scale)
	}
	if cm != nil {
		sum = m.reduceStats(sum)
		if err := cm.Err(); err != nil {
			m.ready = false
			return Result{}, fmt.Errorf("model: forward: %w", err)
		}
	}
	r := Result{Targets: global}
	for l := range a.Layers {
		r.Aux += a.Layers[l].MoE.Aux.Value
	}
	if global > 0 {
		r.CE = sum / float64(global)
	}
	r.Loss = r.CE + cfg.AuxCoef*r.Aux
	if cfg.ZLossCoef > 0 {
		r.ZLoss = m.RouterZLoss()
		r.Loss += cfg.ZLossCoef * r.ZLoss
	}
	m.ready = wantGrad
	return r, nil
}

// vocabParallelCE is the cross-entropy of this rank's vocabulary shard
// [tpRank·vl, (tpRank+1)·vl): per-row statistics are all-gathered over TP,
// every rank forms the same lse and loss, and its dlogits shard (when
// dlogits is non-nil). It returns the local rows' loss sum.
func (m *Model) vocabParallelCE(dlogits []float32, targets []int32, n, vl, tp, tpRank int, scale float32) float64 {
	a := m.acts
	a.ceStats = growF32(a.ceStats, 3*n)
	a.ceGathered = growF32(a.ceGathered, tp*3*n)
	a.ceLSE = growF32(a.ceLSE, n)
	stats, gathered, lse := a.ceStats, a.ceGathered, a.ceLSE
	v0 := tpRank * vl
	tensor.CrossEntropyShardStats(stats, a.Logits[:n*vl], targets, n, vl, v0)
	m.Comms.GatherTP(stats, gathered)
	sum, _ := tensor.CrossEntropyShardCombine(a.Losses[:n], lse, gathered, targets, n, tp)
	if dlogits != nil {
		tensor.CrossEntropyShardGrad(dlogits, a.Logits[:n*vl], lse, targets, n, vl, v0, scale)
	}
	return sum
}

// reduceStats sums the CE loss sum and every layer's aux-loss and z-loss
// statistics over the ranks holding the step's tokens (one reduction for
// the whole model) and finishes each layer's aux and z-loss from the global
// sums. It returns the global CE sum.
func (m *Model) reduceStats(ceSum float64) float64 {
	a, e := m.acts, m.Cfg.Experts
	per := 2*e + 3 // slot sums, prob sums, count, z sum, z count
	a.stats = growF32(a.stats, 2*(1+len(a.Layers)*per))
	buf := stats64(a.stats)
	buf.put(0, ceSum)
	for l := range a.Layers {
		st := &a.Layers[l].MoE
		o := 1 + l*per
		for x := 0; x < e; x++ {
			buf.put(o+x, st.Aux.SlotSum[x])
			buf.put(o+e+x, st.Aux.ProbSum[x])
		}
		buf.put(o+2*e, float64(st.Aux.Count))
		buf.put(o+2*e+1, st.ZLoss.Sum)
		buf.put(o+2*e+2, float64(st.ZLoss.Count))
	}
	m.Comms.SumTokens(buf)
	zloss := m.Cfg.ZLossCoef > 0
	for l := range a.Layers {
		st := &a.Layers[l].MoE
		o := 1 + l*per
		for x := 0; x < e; x++ {
			st.Aux.SlotSum[x] = buf.get(o + x)
			st.Aux.ProbSum[x] = buf.get(o + e + x)
		}
		st.Aux.Count = int(math.Round(buf.get(o + 2*e)))
		st.ZLoss.Sum = buf.get(o + 2*e + 1)
		st.ZLoss.Count = int(math.Round(buf.get(o + 2*e + 2)))
		st.FinishStats(m.Cfg.TopK, zloss)
	}
	return buf.get(0)
}

func (m *Model) moeDims() moe.Dims {
	tp := m.Shard.norm().TP
	return moe.Dims{D: m.Cfg.DModel, H: m.Cfg.ExpertHidden / tp, E: m.Cfg.Experts, K: m.Cfg.TopK}
}

// Backward accumulates the gradient of the last Forward(…, true)'s loss into
// Grads (this rank's shard of it; with Comms, its contribution to the global
// batch's gradient, which the data-parallel reduction sums).
func (m *Model) Backward() error {
	if !m.ready {
		return fmt.Errorf("model: Backward without a preceding Forward(wantGrad=true)")
	}
	m.ready = false
	cfg, a, dm := m.Cfg, m.acts, m.dims
	md := m.moeDims()
	mask := a.Mask[:dm.N]
	tp, _ := tpOf(m.Comms)
	last := a.Layers[len(a.Layers)-1].Out
	HeadBackward(a.DRes, m.G, a.DLogits, a.LNF, a.RstdF, last, m.P, dm, cfg.Vocab/tp, a.DTmp)
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
	if m.Comms != nil {
		if err := m.Comms.Err(); err != nil {
			return fmt.Errorf("model: backward: %w", err)
		}
	}
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

// growF32 returns s resized to n, reallocating only when it is too small
// (step-to-step scratch of the sharded forward).
func growF32(s []float32, n int) []float32 {
	if cap(s) < n {
		return make([]float32, n)
	}
	return s[:n]
}
