package spsa

import (
	"errors"
	"fmt"
	"math"
)

// Quantizations of the projected gradient (Config.Quant).
const (
	QuantInt8 = "int8" // one byte per direction: q = round(127·clamp(g/clip, −1, 1))
	QuantFP32 = "fp32" // four bytes per direction: g rounded to float32
)

// MaxDirections bounds Config.Directions (and the entries of one worker in
// a log record): a step's payload stays small and a record bounded.
const MaxDirections = 1024

// Config is the [spsa] section of a job.
type Config struct {
	// Epsilon is the perturbation size ε: parameters are evaluated at
	// θ ± ε·z with z a Rademacher (±1) direction. It is rounded to float32
	// before use, and the difference quotient divides by that value.
	Epsilon float64 `toml:"epsilon"`
	// LR is the step size: θ ← θ − lr·ĝ·z for every (direction, ĝ) of the
	// step, ĝ the dequantized projected gradient.
	LR float64 `toml:"lr"`
	// Directions is the number of directions each worker evaluates per step
	// (two forward passes each, on the same batch).
	Directions int `toml:"directions"`
	// Quant is how the projected gradient travels: "int8" (default) or
	// "fp32" (for comparison).
	Quant string `toml:"quant"`
	// Clip is the int8 scale: g is clamped to [−clip, clip] and sent as
	// round(127·g/clip), so one step of the code is clip/127. A fixed scale
	// needs no agreement between workers and no state for replay; pick it
	// at a few times the typical |g| (the step statistics report how often
	// it clips). Ignored by fp32.
	Clip float64 `toml:"clip"`
	// Seed is the job's direction seed, mixed into every direction's
	// identifier; every worker of a job must use the same one.
	Seed uint64 `toml:"seed"`
	// InitFrom is the checkpoint a train.mode = "spsa" job fine-tunes
	// (train.OpenRef's syntax: a step directory, DIR, DIR:latest,
	// DIR:STEP); only its model weights are read.
	InitFrom string `toml:"init_from"`
	// Log is the (step, gradient) log the job's rank 0 keeps and every
	// rank replays when the job restarts; "" = spsa.log in the launch's
	// checkpoint directory, none without one.
	Log string `toml:"log"`
}

// DefaultConfig: ε = 1e-3, lr = 1e-5, one direction per worker per step,
// int8 with clip 4, seed 1.
func DefaultConfig() Config {
	return Config{Epsilon: 1e-3, LR: 1e-5, Directions: 1, Quant: QuantInt8, Clip: 4, Seed: 1}
}

// Validate checks every field; errors name the TOML key (prefix "spsa.").
func (c Config) Validate() error {
	var errs []error
	finitePos := func(v float64) bool {
		return v > 0 && !math.IsInf(v, 0) && !math.IsNaN(v)
	}
	if !finitePos(c.Epsilon) || float32(c.Epsilon) == 0 || math.IsInf(float64(float32(c.Epsilon)), 0) {
		errs = append(errs, fmt.Errorf("spsa.epsilon = %g: must be a positive float32 (> 0, finite)", c.Epsilon))
	}
	if !finitePos(c.LR) {
		errs = append(errs, fmt.Errorf("spsa.lr = %g: must be finite and > 0", c.LR))
	}
	if c.Directions < 1 || c.Directions > MaxDirections {
		errs = append(errs, fmt.Errorf("spsa.directions = %d: must be in [1, %d]", c.Directions, MaxDirections))
	}
	switch c.Quant {
	case QuantInt8:
		if !finitePos(c.Clip) {
			errs = append(errs, fmt.Errorf("spsa.clip = %g: must be finite and > 0 with spsa.quant = %q", c.Clip, QuantInt8))
		}
	case QuantFP32:
	default:
		errs = append(errs, fmt.Errorf("spsa.quant = %q: want %q or %q", c.Quant, QuantInt8, QuantFP32))
	}
	return errors.Join(errs...)
}

// EntryBytes is the payload size of one direction's projected gradient.
func (c Config) EntryBytes() int {
	if c.Quant == QuantFP32 {
		return 4
	}
	return 1
}
