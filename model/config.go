// Package model is moetrain's reference MoE decoder: configuration, the flat
// parameter layout shared by parameters, gradients and optimizer moments, the
// activation buffers, each layer's forward/backward as a pair of free
// functions (llm.c style), and the serial training step that every parallel
// layout is checked against.
//
// It must not import collective or parallel: the model calls its Comms at
// fixed points and nothing else, and a parallel plan implements them.
package model

import (
	"errors"
	"fmt"
)

// Config is the [model] section of a job. DefaultConfig is the reference
// (benchmark) model: 9,644,288 parameters.
type Config struct {
	// Vocab is the vocabulary size; 256 for the byte tokenizer.
	Vocab int `toml:"vocab"`
	// DModel is the residual stream width.
	DModel int `toml:"d_model"`
	// Layers is the number of transformer blocks.
	Layers int `toml:"layers"`
	// Heads is the number of attention heads; DModel must be a multiple.
	Heads int `toml:"heads"`
	// SeqLen is the largest sequence length the model accepts: the size of
	// the learned position table. Batches may be shorter.
	SeqLen int `toml:"seq_len"`
	// NormEps is RMSNorm's epsilon.
	NormEps float64 `toml:"norm_eps"`
	// Experts is the number of experts per MoE layer.
	Experts int `toml:"experts"`
	// ExpertHidden is each expert's hidden width (DModel→ExpertHidden→DModel).
	ExpertHidden int `toml:"expert_hidden"`
	// TopK is how many experts each token is routed to.
	TopK int `toml:"top_k"`
	// AuxCoef weights the Switch/GShard load-balancing loss summed over
	// layers: loss = CE + AuxCoef·Σ aux.
	AuxCoef float64 `toml:"aux_coef"`
	// InitStd is the standard deviation of the normal initialisation of every
	// matrix and embedding (norm weights start at 1).
	InitStd float64 `toml:"init_std"`
	// Router picks the MoE router: "topk" (top-k, gates renormalised over
	// the k chosen), "moge" (Mixture of Grouped Experts: top-(top_k/groups)
	// inside each of the groups, gates the unrenormalised global scores, so
	// every group receives the same number of slots) or "group_limited"
	// (DeepSeek-V3: keep the topk_groups groups with the highest sum of
	// their two best scores, then top-k inside them, gates renormalised).
	Router string `toml:"router"`
	// Score turns router logits into scores: "softmax" (over the experts)
	// or "sigmoid" (per expert).
	Score string `toml:"score"`
	// Groups splits the experts into equal blocks of consecutive experts for
	// "moge" and "group_limited" (normally the expert-parallel degree); it
	// must divide experts (and top_k for moge). Ignored by "topk".
	Groups int `toml:"groups"`
	// TopKGroups is how many groups "group_limited" keeps per token; 0
	// keeps all groups.
	TopKGroups int `toml:"topk_groups"`
	// ZLossCoef weights the router z-loss summed over layers:
	// loss += ZLossCoef·Σ mean(logsumexp(router logits)²). 0 = off.
	ZLossCoef float64 `toml:"z_loss_coef"`
	// BiasUpdateRate is γ of aux-loss-free balancing: after every optimizer
	// step each expert's selection bias moves by −γ·sign(load − mean load).
	// 0 = off.
	BiasUpdateRate float64 `toml:"bias_update_rate"`
	// CapacityFactor C caps each expert at ceil(C·N·top_k/experts) slots of
	// the N tokens of a forward; dropped slots pass the token through the
	// residual only. 0 = dropless.
	CapacityFactor float64 `toml:"capacity_factor"`
	// DropPolicy picks the slots an over-capacity expert drops:
	// "probability" (lowest router score first) or "position" (later tokens
	// first).
	DropPolicy string `toml:"drop_policy"`
	// EPChunks pipelines the expert-parallel exchange (Tutel-style): the
	// dispatch, the expert GEMMs and the combine run in that many row
	// chunks, chunk i's GEMMs overlapping the others' exchanges, forward
	// and backward. 0 (the default) and 1 are unpipelined, 2..16 fixes the
	// count, -1 lets every layer choose from measured times (and re-measure
	// now and then). Results change only by float reordering; a fixed count
	// keeps runs and resumes bitwise reproducible, -1 does not (the choice
	// follows timings). No effect without EP.
	EPChunks int `toml:"ep_chunks"`
	// DispatchDType is the element type of the forward dispatch: "fp32",
	// "bf16" or "fp8e4m3" (per-row scales); with bf16 or fp8 the forward
	// combine travels as bf16, the backward's exchanges stay fp32
	// (docs/algorithms/ep-dispatch.md). No effect without EP: the serial
	// model never rounds.
	DispatchDType string `toml:"dispatch_dtype"`
	// MoELayout is "standard" (experts d_model → expert_hidden → d_model)
	// or "dcca" (BigMac's descend-communicate-communicate-ascend: every
	// layer projects each token to dispatch_dim on its own rank before the
	// dispatch, its experts work at dispatch_dim, and the combined outputs
	// are projected back; the two projections are shared by the layer's
	// experts and replicated on every rank).
	MoELayout string `toml:"moe_layout"`
	// DispatchDim is the DCCA layout's dimension (1..d_model); 0 otherwise.
	DispatchDim int `toml:"dispatch_dim"`
}

// DCCA reports whether the MoE layers use the DCCA layout.
func (c Config) DCCA() bool { return c.MoELayout == "dcca" }

// expertDim is the width the experts work at: dispatch_dim under DCCA,
// else d_model.
func (c Config) expertDim() int {
	if c.DCCA() {
		return c.DispatchDim
	}
	return c.DModel
}

// DefaultConfig returns the reference model.
func DefaultConfig() Config {
	return Config{
		Vocab:        256,
		DModel:       256,
		Layers:       4,
		Heads:        4,
		SeqLen:       256,
		NormEps:      1e-5,
		Experts:      8,
		ExpertHidden: 512,
		TopK:         2,
		AuxCoef:      0.01,
		InitStd:      0.02,
		Router:       "topk",
		Score:        "softmax",
		Groups:       1,
		DropPolicy:   "probability",
		// EPChunks 0: unpipelined.
		DispatchDType: "fp32",
		MoELayout:     "standard",
	}
}

// HeadDim is DModel/Heads.
func (c Config) HeadDim() int { return c.DModel / c.Heads }

// Validate checks every field; the error names each offending field by its
// TOML key (prefix "model.").
func (c Config) Validate() error {
	var errs []error
	pos := func(name string, v int) {
		if v < 1 {
			errs = append(errs, fmt.Errorf("model.%s = %d: must be at least 1", name, v))
		}
	}
	pos("vocab", c.Vocab)
	pos("d_model", c.DModel)
	pos("layers", c.Layers)
	pos("heads", c.Heads)
	pos("seq_len", c.SeqLen)
	pos("experts", c.Experts)
	pos("expert_hidden", c.ExpertHidden)
	pos("top_k", c.TopK)
	if c.Heads >= 1 && c.DModel >= 1 && c.DModel%c.Heads != 0 {
		errs = append(errs, fmt.Errorf("model.d_model = %d: must be a multiple of model.heads = %d", c.DModel, c.Heads))
	}
	if c.TopK >= 1 && c.Experts >= 1 && c.TopK > c.Experts {
		errs = append(errs, fmt.Errorf("model.top_k = %d: must not exceed model.experts = %d", c.TopK, c.Experts))
	}
	if !(c.NormEps > 0 && c.NormEps < 1) {
		errs = append(errs, fmt.Errorf("model.norm_eps = %g: must be in (0, 1)", c.NormEps))
	}
	if !(c.AuxCoef >= 0 && c.AuxCoef < 1e6) {
		errs = append(errs, fmt.Errorf("model.aux_coef = %g: must be a finite value >= 0", c.AuxCoef))
	}
	if !(c.InitStd > 0 && c.InitStd < 10) {
		errs = append(errs, fmt.Errorf("model.init_std = %g: must be in (0, 10)", c.InitStd))
	}
	errs = append(errs, c.validateRouter()...)
	return errors.Join(errs...)
}
