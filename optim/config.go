// Package optim holds the optimizer (AdamW with decoupled weight decay),
// learning-rate schedules and global-norm gradient clipping. Everything works
// on a flat buffer and a range [lo, hi) of it, so a ZeRO-1 rank can update
// only its shard with the same code. It must not know the model's layout or
// the mesh (callers pass buffers and ranges) and imports only package tensor.
package optim

import (
	"errors"
	"fmt"
	"math"
)

// Config is the [optim] section of a job.
type Config struct {
	// LR is the peak learning rate.
	LR float64 `toml:"lr"`
	// Beta1 is Adam's first-moment decay.
	Beta1 float64 `toml:"beta1"`
	// Beta2 is Adam's second-moment decay.
	Beta2 float64 `toml:"beta2"`
	// Eps is added to the bias-corrected RMS in Adam's denominator.
	Eps float64 `toml:"eps"`
	// WeightDecay is decoupled (AdamW) weight decay, applied to every
	// parameter as p -= lr·wd·p.
	WeightDecay float64 `toml:"weight_decay"`
	// Schedule is "constant" or "cosine" (linear warmup then cosine decay to
	// MinLRRatio·LR over DecaySteps).
	Schedule string `toml:"schedule"`
	// WarmupSteps is the number of linear warmup steps (cosine only).
	WarmupSteps int `toml:"warmup_steps"`
	// DecaySteps is the step at which the cosine reaches its floor; 0 means
	// the job's train.steps.
	DecaySteps int `toml:"decay_steps"`
	// MinLRRatio is the cosine floor as a fraction of LR.
	MinLRRatio float64 `toml:"min_lr_ratio"`
	// ClipNorm clips the global gradient L2 norm to this value; 0 disables.
	ClipNorm float64 `toml:"clip_norm"`
}

// DefaultConfig is the reference: AdamW lr 1e-3, betas 0.9/0.999, eps 1e-8,
// weight decay 0.01, constant lr, no clipping.
func DefaultConfig() Config {
	return Config{
		LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01,
		Schedule: "constant", WarmupSteps: 0, DecaySteps: 0, MinLRRatio: 0.1, ClipNorm: 0,
	}
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// Validate checks every field; errors name the TOML key ("optim.lr").
func (c Config) Validate() error {
	var errs []error
	bad := func(key string, v any, want string) {
		errs = append(errs, fmt.Errorf("optim.%s = %v: %s", key, v, want))
	}
	if !(finite(c.LR) && c.LR > 0) {
		bad("lr", c.LR, "must be > 0")
	}
	if !(c.Beta1 >= 0 && c.Beta1 < 1) {
		bad("beta1", c.Beta1, "must be in [0, 1)")
	}
	if !(c.Beta2 >= 0 && c.Beta2 < 1) {
		bad("beta2", c.Beta2, "must be in [0, 1)")
	}
	if !(finite(c.Eps) && c.Eps > 0) {
		bad("eps", c.Eps, "must be > 0")
	}
	if !(finite(c.WeightDecay) && c.WeightDecay >= 0) {
		bad("weight_decay", c.WeightDecay, "must be >= 0")
	}
	switch c.Schedule {
	case "constant", "cosine":
	default:
		bad("schedule", fmt.Sprintf("%q", c.Schedule), `must be "constant" or "cosine"`)
	}
	if c.WarmupSteps < 0 {
		bad("warmup_steps", c.WarmupSteps, "must be >= 0")
	}
	if c.DecaySteps < 0 {
		bad("decay_steps", c.DecaySteps, "must be >= 0 (0 = train.steps)")
	}
	// With decay_steps <= warmup_steps the cosine never runs: the rate jumps
	// from the peak straight to the floor when warmup ends.
	if c.Schedule == "cosine" && c.DecaySteps > 0 && c.DecaySteps <= c.WarmupSteps {
		bad("decay_steps", c.DecaySteps, fmt.Sprintf("must be > warmup_steps (%d)", c.WarmupSteps))
	}
	if !(c.MinLRRatio >= 0 && c.MinLRRatio <= 1) {
		bad("min_lr_ratio", c.MinLRRatio, "must be in [0, 1]")
	}
	if !(finite(c.ClipNorm) && c.ClipNorm >= 0) {
		bad("clip_norm", c.ClipNorm, "must be >= 0 (0 = no clipping)")
	}
	return errors.Join(errs...)
}
