package optim

import "math"

// Schedule maps a 0-based step to the learning rate used by that step.
type Schedule interface {
	LR(step int) float64
}

// Constant is a fixed learning rate.
type Constant struct{ Rate float64 }

// LR implements Schedule.
func (c Constant) LR(int) float64 { return c.Rate }

// WarmupCosine rises linearly from Peak/Warmup to Peak over Warmup steps, then
// follows a half cosine down to Min at step Decay and stays there.
type WarmupCosine struct {
	Peak, Min     float64
	Warmup, Decay int
}

// LR implements Schedule.
func (w WarmupCosine) LR(step int) float64 {
	if step < w.Warmup {
		return w.Peak * float64(step+1) / float64(w.Warmup)
	}
	if step >= w.Decay || w.Decay <= w.Warmup {
		return w.Min
	}
	frac := float64(step-w.Warmup) / float64(w.Decay-w.Warmup)
	return w.Min + 0.5*(w.Peak-w.Min)*(1+math.Cos(math.Pi*frac))
}

// NewSchedule builds cfg's schedule; totalSteps stands in for DecaySteps 0.
func NewSchedule(cfg Config, totalSteps int) Schedule {
	if cfg.Schedule == "cosine" {
		decay := cfg.DecaySteps
		if decay == 0 {
			decay = totalSteps
		}
		return WarmupCosine{Peak: cfg.LR, Min: cfg.LR * cfg.MinLRRatio, Warmup: cfg.WarmupSteps, Decay: decay}
	}
	return Constant{Rate: cfg.LR}
}
