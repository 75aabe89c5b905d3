package model

import "github.com/moetrain/moetrain/moe"

// LayerActs are one block's saved activations for N = B·T tokens.
type LayerActs struct {
	In    []float32 // [N, D] block input (residual stream); aliases the previous block's Out
	LN1   []float32 // [N, D]
	Rstd1 []float32 // [N]
	QKV   []float32 // [N, 3D]
	Att   []float32 // [N, D] attention output (heads concatenated)
	LSE   []float32 // [B, Heads, T]
	Mid   []float32 // [N, D] In + attention projection
	LN2   []float32 // [N, D]
	Rstd2 []float32 // [N]
	Out   []float32 // [N, D] Mid + MoE(LN2)
	MoE   moe.State
}

// Acts are the whole model's activations and backward scratch for up to
// Cap tokens, allocated once and reused by every batch with B·T ≤ Cap.
type Acts struct {
	Cap    int
	Res0   []float32 // [N, D] embeddings (input of block 0)
	Layers []LayerActs
	LNF    []float32 // [N, D]
	RstdF  []float32 // [N]
	Logits []float32 // [N, V]
	Losses []float32 // [N]
	Mask   []bool    // [N] target >= 0 (counted by the aux loss)

	// backward scratch
	DLogits []float32 // [N, V]
	DRes    []float32 // [N, D] gradient of the residual stream
	DTmp    []float32 // [N, D] gradient of a norm output / attention output
	DQKV    []float32 // [N, 3D]
	AttD    []float32 // [B, Heads, T] rowsum(dO∘O)
	MoE     moe.Scratch

	// sharded forward scratch (Model.Comms set): vocab-parallel CE stats
	// [N, 3], their all-gather [TP, N, 3], the rows' lse [N]; the global
	// statistics reduction buffer
	ceStats, ceGathered, ceLSE, stats []float32
}

// newActs allocates activations for n tokens of shard sh.
func newActs(cfg Config, sh Shard, n int) *Acts {
	sh = sh.norm()
	d, v, h := cfg.DModel, cfg.Vocab/sh.TP, cfg.Heads/sh.TP
	c := h * cfg.HeadDim()
	f := func(k int) []float32 { return make([]float32, k) }
	a := &Acts{
		Cap: n, Res0: f(n * d), LNF: f(n * d), RstdF: f(n), Logits: f(n * v), Losses: f(n),
		Mask: make([]bool, n), DLogits: f(n * v), DRes: f(n * d), DTmp: f(n * d), DQKV: f(n * 3 * c), AttD: f(n * h),
	}
	dm := moeDims(cfg)
	dm.H /= sh.TP
	a.MoE.Resize(dm, n)
	in := a.Res0
	for i := 0; i < cfg.Layers; i++ {
		la := LayerActs{
			In: in, LN1: f(n * d), Rstd1: f(n), QKV: f(n * 3 * c), Att: f(n * c), LSE: f(n * h),
			Mid: f(n * d), LN2: f(n * d), Rstd2: f(n), Out: f(n * d),
		}
		la.MoE.Resize(dm, n)
		a.Layers = append(a.Layers, la)
		in = la.Out
	}
	return a
}

func moeDims(cfg Config) moe.Dims {
	return moe.Dims{D: cfg.DModel, H: cfg.ExpertHidden, E: cfg.Experts, K: cfg.TopK}
}
