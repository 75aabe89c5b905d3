package model

import (
	"fmt"
	"math"
)

// Memory estimates, in bytes, what one rank holding shard sh of a model
// needs to train it on forwards of Tokens tokens: parameters, gradients and
// the data-parallel reduction's staging (NewSharded, the reducer), AdamW's
// two moments (unsharded: ZeRO-1 only lowers them), the activations and
// backward scratch (newActs, moe.State and moe.Scratch) and, while a
// sharded model initialises, the largest global tensor it draws whole
// (Layout.InitParams). Every product is taken in float64, so any
// configuration, however large, has an estimate: it exists to refuse a
// configuration before anything is allocated for it, and an estimate that
// fits in MaxRankMemory also bounds every size the model computes in int.
type Memory struct {
	Tokens     float64 // tokens per forward on this rank
	Params     float64 // elements of this rank's parameters
	ParamBytes float64 // parameters, gradients and the reduction's stage
	OptimBytes float64 // AdamW's first and second moments
	ActBytes   float64 // activations and backward scratch
	InitBytes  float64 // transient, while a sharded model initialises
}

// MaxRankMemory is the most memory a configuration may need per rank: far
// beyond any host this runs on, low enough that every size fits in int.
const MaxRankMemory = 1 << 40

// Total is the estimate's sum.
func (m Memory) Total() float64 { return m.ParamBytes + m.OptimBytes + m.ActBytes + m.InitBytes }

func (m Memory) String() string {
	return fmt.Sprintf("%s (%.4g parameters: %s with gradients and reduction buffers, %s of optimizer state; %s of activations for %.0f tokens)",
		FormatBytes(m.Total()), m.Params, FormatBytes(m.ParamBytes), FormatBytes(m.OptimBytes), FormatBytes(m.ActBytes), m.Tokens)
}

// Check returns an error carrying the estimate when it exceeds
// MaxRankMemory.
func (m Memory) Check() error {
	if t := m.Total(); !(t <= MaxRankMemory) { // NaN too
		return fmt.Errorf("model: estimated memory per rank %v exceeds the limit of %s", m, FormatBytes(MaxRankMemory))
	}
	return nil
}

// EstimateMemory estimates what rank shard sh of cfg needs for forwards of
// tokens tokens (a float64, as a configuration's product of batch sizes
// may not fit in int). It never fails: sizes below 1 count as 1 and
// degrees as at least 1 (the configuration's own validation reports them).
func EstimateMemory(cfg Config, sh Shard, tokens float64) Memory {
	f := func(x int) float64 { return float64(max(x, 1)) }
	tp, ep := f(sh.TP), f(sh.EP)
	v, d, l, heads, seq := f(cfg.Vocab), f(cfg.DModel), f(cfg.Layers), f(cfg.Heads), f(cfg.SeqLen)
	e, h, k, n := f(cfg.Experts), f(cfg.ExpertHidden), f(cfg.TopK), math.Max(tokens, 1)
	// The shard's sizes (NewShardLayout): TP splits heads, each expert's
	// hidden dimension and the LM head's vocabulary; EP splits the experts.
	c, hl, el, vl, hh := d/tp, h/tp, e/ep, v/tp, heads/tp
	// Under DCCA the experts work at x = dispatch_dim and the layer adds
	// its two replicated projections (2·r·d) and their [N, r] buffers.
	x, r := d, 0.0
	if cfg.DCCA() {
		x, r = f(cfg.DispatchDim), f(cfg.DispatchDim)
	}
	perLayer := d + 3*c*d + d*c + d + e*d + 2*el*hl*x + 2*r*d
	params := v*d + seq*d + l*perLayer + d + vl*d
	m := Memory{Tokens: tokens, Params: params}
	m.ParamBytes = 3 * 4 * params
	m.OptimBytes = 2 * 4 * params
	// Floats per token: the model's buffers (with the batch's four int32
	// arrays), the MoE backward scratch (expert-parallel copies included),
	// and per layer the block's saved activations and its MoE state.
	model := 4*d + 2*vl + 3*c + hh + 7
	scratch := 4*k*d + 2*k*hl + 2*k + 2*e + d + 2*r
	layer := 5*d + 4*c + hh + 2 + 2*e + 6*k + 4*k*d + 2*k*hl + 2*r
	m.ActBytes = 4 * n * (model + scratch + l*layer)
	if sh.TP > 1 || sh.EP > 1 {
		m.InitBytes = 4 * math.Max(e*h*x, math.Max(v*d, 3*d*d))
	}
	return m
}

// FormatBytes writes n bytes with a binary unit (KiB … EiB), or in
// scientific notation beyond.
func FormatBytes(n float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i := 0
	for n >= 1024 && i < len(units)-1 {
		n /= 1024
		i++
	}
	if n >= 1024 {
		return fmt.Sprintf("%.3g %s", n, units[i])
	}
	if i == 0 {
		return fmt.Sprintf("%.0f B", n)
	}
	return fmt.Sprintf("%.1f %s", n, units[i])
}
