package model

import (
	"fmt"
)

// Shard says which slice of the model one rank holds (Megatron-style tensor
// parallelism and expert parallelism; see docs/mesh.md#what-each-dimension-shards):
//
//   - TP splits attention heads (qkv rows of the rank's heads: column
//     parallel; proj columns: row parallel), each expert's hidden dimension
//     (w1 rows, w2 columns) and the LM head's vocabulary rows (vocab-parallel
//     cross-entropy). Embeddings, norms and routers are replicated.
//   - EP splits the experts: rank EPRank holds experts
//     [EPRank·E/EP, (EPRank+1)·E/EP) of every layer.
//
// The zero value and {1, 0, 1, 0} are the whole model.
type Shard struct {
	TP, TPRank int
	EP, EPRank int
}

// Whole is the unsharded model.
var Whole = Shard{TP: 1, EP: 1}

func (s Shard) norm() Shard {
	if s.TP == 0 {
		s.TP = 1
	}
	if s.EP == 0 {
		s.EP = 1
	}
	return s
}

// IsWhole reports whether s holds every parameter.
func (s Shard) IsWhole() bool { s = s.norm(); return s.TP == 1 && s.EP == 1 }

// Validate checks that cfg splits evenly under s; the error names the model
// key and the degree.
func (s Shard) Validate(cfg Config) error {
	s = s.norm()
	if s.TP < 1 || s.TPRank < 0 || s.TPRank >= s.TP {
		return fmt.Errorf("model: tensor-parallel rank %d of %d is out of range", s.TPRank, s.TP)
	}
	if s.EP < 1 || s.EPRank < 0 || s.EPRank >= s.EP {
		return fmt.Errorf("model: expert-parallel rank %d of %d is out of range", s.EPRank, s.EP)
	}
	for _, c := range []struct {
		key string
		v   int
		by  int
		why string
	}{
		{"heads", cfg.Heads, s.TP, "mesh.tp (attention heads are split over tensor-parallel ranks)"},
		{"expert_hidden", cfg.ExpertHidden, s.TP, "mesh.tp (each expert's hidden dimension is split over tensor-parallel ranks)"},
		{"vocab", cfg.Vocab, s.TP, "mesh.tp (the LM head is vocab-parallel)"},
		{"experts", cfg.Experts, s.EP, "mesh.ep (experts are split over expert-parallel ranks)"},
	} {
		if c.v%c.by != 0 {
			return fmt.Errorf("model.%s = %d: must be a multiple of %s = %d", c.key, c.v, c.why, c.by)
		}
	}
	return nil
}

// NewShardLayout is the layout of the parameters s holds: the same entries
// in the same order as NewLayout(cfg), with local shapes, each recording
// where its box lies in the global tensor (Entry.Global, Entry.Start). qkv is
// [3, D, D] globally so that a rank's heads are one box [3, D/TP, D].
func NewShardLayout(cfg Config, s Shard) (Layout, error) {
	s = s.norm()
	if err := s.Validate(cfg); err != nil {
		return Layout{}, err
	}
	g := NewLayout(cfg)
	d, e, h, v := cfg.DModel, cfg.Experts, cfg.ExpertHidden, cfg.Vocab
	c, hl, el, vl := d/s.TP, h/s.TP, e/s.EP, v/s.TP
	var l Layout
	l.index = map[string]int{}
	for i, ge := range g.Entries {
		le := Entry{Name: ge.Name, Offset: l.Total, Init: ge.Init, Expert: ge.Expert, Global: ge.Shape}
		le.Shape = append([]int(nil), ge.Shape...)
		le.Start = make([]int, len(ge.Shape))
		switch kind := entryKind(ge.Name); kind {
		case "qkv": // [3, D, D]: this rank's heads of q, k and v
			le.Shape[1], le.Start[1] = c, s.TPRank*c
		case "proj": // [D, D]: the input columns of this rank's heads
			le.Shape[1], le.Start[1] = c, s.TPRank*c
		case "w1": // [E, H, D]
			le.Shape[0], le.Start[0] = el, s.EPRank*el
			le.Shape[1], le.Start[1] = hl, s.TPRank*hl
		case "w2": // [E, D, H]
			le.Shape[0], le.Start[0] = el, s.EPRank*el
			le.Shape[2], le.Start[2] = hl, s.TPRank*hl
		case "lm_head": // [V, D]
			le.Shape[0], le.Start[0] = vl, s.TPRank*vl
		}
		l.index[le.Name] = i
		l.Entries = append(l.Entries, le)
		l.Total += le.Size()
	}
	return l, nil
}

// entryKind is the tensor kind of a layout name ("layers.3.w1" → "w1").
func entryKind(name string) string {
	for i := len(name) - 1; i >= 0; i-- {
		if name[i] == '.' {
			return name[i+1:]
		}
	}
	return name
}

// GlobalShape is the entry's shape in the whole model (Shape when unsharded).
func (e Entry) GlobalShape() []int {
	if e.Global == nil {
		return e.Shape
	}
	return e.Global
}

// IsSharded reports whether the entry holds only part of its global tensor.
func (e Entry) IsSharded() bool {
	g := e.GlobalShape()
	for i := range e.Shape {
		if e.Shape[i] != g[i] {
			return true
		}
	}
	return false
}

// Runs calls fn(local, global, n) for every contiguous run of the entry's
// box in order: local and global are element offsets inside the local and
// global tensors, n the run length. Rows of the box that follow each other
// in the global tensor too (a box spanning whole trailing dimensions, e.g.
// a vocab-parallel lm_head shard) come as one run.
func (e Entry) Runs(fn func(local, global, n int)) {
	pl, pg, pn := 0, 0, 0
	e.rows(func(l, g, n int) {
		if pn > 0 && l == pl+pn && g == pg+pn {
			pn += n
			return
		}
		if pn > 0 {
			fn(pl, pg, pn)
		}
		pl, pg, pn = l, g, n
	})
	if pn > 0 {
		fn(pl, pg, pn)
	}
}

// rows calls fn(local, global, n) for every row (last-dimension run) of
// the entry's box in order.
func (e Entry) rows(fn func(local, global, n int)) {
	g := e.GlobalShape()
	nd := len(e.Shape)
	if nd == 0 {
		return
	}
	strides := make([]int, nd)
	st := 1
	for i := nd - 1; i >= 0; i-- {
		strides[i] = st
		st *= g[i]
	}
	start := e.Start
	if start == nil {
		start = make([]int, nd)
	}
	run := e.Shape[nd-1]
	rows := e.Size() / max(run, 1)
	idx := make([]int, nd-1)
	for r := 0; r < rows; r++ {
		off := start[nd-1]
		for i := 0; i < nd-1; i++ {
			off += (start[i] + idx[i]) * strides[i]
		}
		fn(r*run, off, run)
		for i := nd - 2; i >= 0; i-- {
			idx[i]++
			if idx[i] < e.Shape[i] {
				break
			}
			idx[i] = 0
		}
	}
}

// Insert copies local (length l.Total) into its boxes of a whole-model
// buffer, used to gather shards.
func (l Layout) Insert(whole, local []float32, wholeLayout Layout) {
	for _, e := range l.Entries {
		ge, _ := wholeLayout.Lookup(e.Name)
		src, dst := e.Slice(local), ge.Slice(whole)
		e.Runs(func(lo, go_, n int) { copy(dst[go_:go_+n], src[lo:lo+n]) })
	}
}
