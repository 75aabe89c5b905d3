package model

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// Init says how a parameter starts.
type Init uint8

const (
	// InitNormal draws N(0, Config.InitStd²).
	InitNormal Init = iota
	// InitOnes sets every element to 1 (RMSNorm weights).
	InitOnes
	// InitFanIn draws N(0, 1/fan_in), fan_in the last dimension: a map
	// that keeps its input's scale (the DCCA projections, which would
	// otherwise shrink the expert path's signal and gradients by their
	// own small scale twice; docs/algorithms/ep-dispatch.md#dcca-layout).
	InitFanIn
)

// Entry is one parameter tensor inside the flat buffer.
type Entry struct {
	Name   string // e.g. "layers.0.qkv"
	Offset int    // first element in the flat buffer
	Shape  []int  // row-major; matrices are [out, in] (y = x·Wᵀ)
	Init   Init
	// Expert marks per-expert tensors whose leading dimension is the expert
	// index (expert parallelism shards them along it).
	Expert bool
	// Global and Start place a shard's entry in the whole model (see
	// NewShardLayout): the global tensor's shape and the offset of this
	// entry's box along each dimension. nil for the whole model.
	Global, Start []int
}

// Size is the number of elements of the entry.
func (e Entry) Size() int {
	n := 1
	for _, d := range e.Shape {
		n *= d
	}
	return n
}

// Layout is the table of every parameter in one flat buffer. Parameters,
// gradients and optimizer moments all use the same layout, so an offset range
// means the same tensor(s) in each (ZeRO-1 shards ranges of it).
type Layout struct {
	Entries []Entry
	Total   int // elements in the flat buffer
	index   map[string]int
}

// NewLayout builds the layout of cfg. Order: tok_emb, pos_emb, then per layer
// ln1, qkv, proj, ln2, router, w1, w2, then ln_f, lm_head. The DCCA layout
// adds moe_down [R, D] after router and moe_up [D, R] after w2 (R =
// dispatch_dim, replicated on every rank), and its experts are w1 [E, H, R]
// and w2 [E, R, H].
func NewLayout(cfg Config) Layout {
	d, e, h := cfg.DModel, cfg.Experts, cfg.ExpertHidden
	var l Layout
	l.index = map[string]int{}
	add := func(name string, init Init, expert bool, shape ...int) {
		en := Entry{Name: name, Offset: l.Total, Shape: shape, Init: init, Expert: expert}
		l.index[name] = len(l.Entries)
		l.Entries = append(l.Entries, en)
		l.Total += en.Size()
	}
	add("tok_emb", InitNormal, false, cfg.Vocab, d)
	add("pos_emb", InitNormal, false, cfg.SeqLen, d)
	for i := 0; i < cfg.Layers; i++ {
		p := fmt.Sprintf("layers.%d.", i)
		add(p+"ln1", InitOnes, false, d)
		add(p+"qkv", InitNormal, false, 3, d, d) // q, k, v planes
		add(p+"proj", InitNormal, false, d, d)
		add(p+"ln2", InitOnes, false, d)
		add(p+"router", InitNormal, false, e, d)
		if cfg.DCCA() {
			add(p+"moe_down", InitFanIn, false, cfg.DispatchDim, d)
		}
		x := cfg.expertDim()
		add(p+"w1", InitNormal, true, e, h, x)
		add(p+"w2", InitNormal, true, e, x, h)
		if cfg.DCCA() {
			add(p+"moe_up", InitFanIn, false, d, cfg.DispatchDim)
		}
	}
	add("ln_f", InitOnes, false, d)
	add("lm_head", InitNormal, false, cfg.Vocab, d)
	return l
}

// Lookup returns the entry called name.
func (l Layout) Lookup(name string) (Entry, bool) {
	i, ok := l.index[name]
	if !ok {
		return Entry{}, false
	}
	return l.Entries[i], true
}

// Slice returns the entry's elements inside buf (a params, grads or moments
// buffer of length Total).
func (e Entry) Slice(buf []float32) []float32 {
	return buf[e.Offset : e.Offset+e.Size() : e.Offset+e.Size()]
}

// LayerWeights are one block's tensors as views into a flat buffer.
type LayerWeights struct {
	LN1    []float32 // [D]
	QKV    []float32 // [3, D, D]: the q, k and v projections
	Proj   []float32 // [D, D]
	LN2    []float32 // [D]
	Router []float32 // [E, D]
	W1     []float32 // [E, H, D]
	W2     []float32 // [E, D, H] ([E, R, H] under DCCA)
	Down   []float32 // [R, D] under DCCA, else nil
	Up     []float32 // [D, R] under DCCA, else nil
}

// Weights are views of every tensor into one flat buffer (parameters or
// gradients); writing through them writes the buffer.
type Weights struct {
	TokEmb []float32 // [V, D]
	PosEmb []float32 // [SeqLen, D]
	Layers []LayerWeights
	LNF    []float32 // [D]
	Head   []float32 // [V, D]
}

// Views cuts buf (length Total) into named views.
func (l Layout) Views(buf []float32) Weights {
	if len(buf) != l.Total {
		panic(fmt.Sprintf("model: buffer has %d elements, layout needs %d", len(buf), l.Total))
	}
	get := func(name string) []float32 {
		e, _ := l.Lookup(name)
		return e.Slice(buf)
	}
	var w Weights
	w.TokEmb, w.PosEmb = get("tok_emb"), get("pos_emb")
	for i := 0; ; i++ {
		p := fmt.Sprintf("layers.%d.", i)
		if _, ok := l.Lookup(p + "ln1"); !ok {
			break
		}
		lw := LayerWeights{
			LN1: get(p + "ln1"), QKV: get(p + "qkv"), Proj: get(p + "proj"), LN2: get(p + "ln2"),
			Router: get(p + "router"), W1: get(p + "w1"), W2: get(p + "w2"),
		}
		if _, ok := l.Lookup(p + "moe_down"); ok {
			lw.Down, lw.Up = get(p+"moe_down"), get(p+"moe_up")
		}
		w.Layers = append(w.Layers, lw)
	}
	w.LNF, w.Head = get("ln_f"), get("lm_head")
	return w
}

// InitParams fills params (length Total) deterministically from seed: each
// entry draws its whole (global) tensor from its own PCG stream keyed by
// (seed, entry index), so adding an entry does not change the others'
// values, and a shard's layout (NewShardLayout) keeps its box of exactly the
// values the whole model gets: every mesh starts from the serial weights.
func (l Layout) InitParams(params []float32, std float64, seed uint64) {
	for i, e := range l.Entries {
		s := e.Slice(params)
		std := std
		if e.Init == InitFanIn {
			shape := e.GlobalShape()
			std = 1 / math.Sqrt(float64(shape[len(shape)-1]))
		}
		switch {
		case e.Init == InitOnes:
			for j := range s {
				s[j] = 1
			}
		case !e.IsSharded():
			fillNormal(s, std, seed, i)
		default:
			n := 1
			for _, x := range e.GlobalShape() {
				n *= x
			}
			full := make([]float32, n)
			fillNormal(full, std, seed, i)
			e.Runs(func(lo, g, k int) { copy(s[lo:lo+k], full[g:g+k]) })
		}
	}
}

// fillNormal draws x from N(0, std²) on entry i's stream of seed.
func fillNormal(x []float32, std float64, seed uint64, i int) {
	r := rand.New(rand.NewPCG(seed, uint64(i)*0x9e3779b97f4a7c15+1))
	for j := range x {
		x[j] = float32(r.NormFloat64() * std)
	}
}

// checkFinite reports the first non-finite element of buf by entry name.
func (l Layout) checkFinite(buf []float32) error {
	for _, e := range l.Entries {
		for j, v := range e.Slice(buf) {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return fmt.Errorf("%s[%d] = %v", e.Name, j, v)
			}
		}
	}
	return nil
}
