// Package train is one rank's training loop: the job configuration, the
// Trainer (forward/backward, optimizer step, evaluation) that the control
// plane drives, and Run, the standalone loop.
package train

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/optim"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/parallel/dp"
	"github.com/moetrain/moetrain/parallel/sp"
	"github.com/moetrain/moetrain/sampling"
)

// Config is the [train] section of a job.
type Config struct {
	// Steps is the number of optimizer steps.
	Steps int `toml:"steps"`
	// Seed seeds the weight initialisation and (with data.seed_offset) the
	// sampler.
	Seed uint64 `toml:"seed"`
	// Threads is the kernel thread budget per process; 0 = GOMAXPROCS.
	Threads int `toml:"threads"`
	// EvalEvery runs validation every this many steps (and after the last);
	// 0 disables periodic validation.
	EvalEvery int `toml:"eval_every"`
	// EvalBatches is the number of fixed validation batches.
	EvalBatches int `toml:"eval_batches"`
	// LogEvery logs a training line every this many steps.
	LogEvery int `toml:"log_every"`
}

// DefaultConfig: 1000 steps, seed 1, validation every 100 steps on 8
// batches, a log line every 10 steps.
func DefaultConfig() Config {
	return Config{Steps: 1000, Seed: 1, Threads: 0, EvalEvery: 100, EvalBatches: 8, LogEvery: 10}
}

// Validate checks every field; errors name the TOML key.
func (c Config) Validate() error {
	var errs []error
	if c.Steps < 1 {
		errs = append(errs, fmt.Errorf("train.steps = %d: must be >= 1", c.Steps))
	}
	if c.Threads < 0 {
		errs = append(errs, fmt.Errorf("train.threads = %d: must be >= 0 (0 = all cores)", c.Threads))
	}
	if c.EvalEvery < 0 {
		errs = append(errs, fmt.Errorf("train.eval_every = %d: must be >= 0 (0 = off)", c.EvalEvery))
	}
	if c.EvalBatches < 1 {
		errs = append(errs, fmt.Errorf("train.eval_batches = %d: must be >= 1", c.EvalBatches))
	}
	if c.LogEvery < 1 {
		errs = append(errs, fmt.Errorf("train.log_every = %d: must be >= 1", c.LogEvery))
	}
	return errors.Join(errs...)
}

// JobConfig is a whole job: one TOML file with a section per component.
type JobConfig struct {
	Model model.Config    `toml:"model"`
	Optim optim.Config    `toml:"optim"`
	Data  sampling.Config `toml:"data"`
	Mesh  parallel.Config `toml:"mesh"`
	DP    dp.Config       `toml:"dp"`
	Train Config          `toml:"train"`
}

// DefaultJobConfig is the reference model on the embedded corpus.
func DefaultJobConfig() JobConfig {
	return JobConfig{
		Model: model.DefaultConfig(),
		Optim: optim.DefaultConfig(),
		Data:  sampling.DefaultConfig(),
		Mesh:  parallel.DefaultConfig(),
		DP:    dp.DefaultConfig(),
		Train: DefaultConfig(),
	}
}

// Validate checks every section and the constraints between them.
func (j JobConfig) Validate() error {
	errs := []error{j.Model.Validate(), j.Optim.Validate(), j.Data.Validate(), j.Train.Validate(), j.DP.Validate(), validateMesh(j.Mesh, j.Model), validateSequenceParallel(j)}
	longest := j.Data.SeqLen
	if j.Data.Mode == sampling.ModeBucket {
		longest = j.Data.EffectiveMaxLen()
	}
	if longest > j.Model.SeqLen {
		errs = append(errs, fmt.Errorf("data sequences of up to %d positions (data.seq_len / data.max_len) exceed model.seq_len = %d, the position table size", longest, j.Model.SeqLen))
	}
	return errors.Join(errs...)
}

func validateMesh(m parallel.Config, mc model.Config) error {
	var errs []error
	if m.DP < 0 {
		errs = append(errs, fmt.Errorf("mesh.dp = %d: must be >= 0 (0 = auto)", m.DP))
	}
	for _, f := range []struct {
		key string
		v   int
	}{{"tp", m.TP}, {"ep", m.EP}, {"sp", m.SP}} {
		if f.v < 1 {
			errs = append(errs, fmt.Errorf("mesh.%s = %d: must be >= 1", f.key, f.v))
		}
	}
	if m.TP >= 1 && mc.Heads >= 1 && mc.Heads%m.TP != 0 {
		errs = append(errs, fmt.Errorf("mesh.tp = %d must divide model.heads = %d", m.TP, mc.Heads))
	}
	if m.TP >= 1 && mc.ExpertHidden >= 1 && mc.ExpertHidden%m.TP != 0 {
		errs = append(errs, fmt.Errorf("mesh.tp = %d must divide model.expert_hidden = %d", m.TP, mc.ExpertHidden))
	}
	if m.TP >= 1 && mc.Vocab >= 1 && mc.Vocab%m.TP != 0 {
		errs = append(errs, fmt.Errorf("mesh.tp = %d must divide model.vocab = %d (the LM head is vocab-parallel)", m.TP, mc.Vocab))
	}
	if m.EP >= 1 && mc.Experts >= 1 && mc.Experts%m.EP != 0 {
		errs = append(errs, fmt.Errorf("mesh.ep = %d must divide model.experts = %d", m.EP, mc.Experts))
	}
	if _, err := sp.ParseAlgorithm(m.SPAlgorithm); err != nil {
		errs = append(errs, fmt.Errorf("mesh.sp_algorithm: %w", err))
	}
	return errors.Join(errs...)
}

// validateSequenceParallel checks what SP > 1 needs of the data: whole
// windows of a length that splits into 2·SP equal zigzag chunks.
func validateSequenceParallel(j JobConfig) error {
	if j.Mesh.SP <= 1 {
		return nil
	}
	if j.Data.Mode != sampling.ModeWindow {
		return fmt.Errorf("mesh.sp = %d needs data.mode = %q (fixed-length windows), not %q", j.Mesh.SP, sampling.ModeWindow, j.Data.Mode)
	}
	if j.Data.SeqLen%(2*j.Mesh.SP) != 0 {
		return fmt.Errorf("mesh.sp = %d: data.seq_len = %d must be a multiple of 2·sp = %d (zigzag chunks)", j.Mesh.SP, j.Data.SeqLen, 2*j.Mesh.SP)
	}
	return nil
}

// LoadJobConfig reads a job TOML file over the defaults: keys it leaves out
// keep their defaults, unknown keys are an error naming them, and the result
// is validated.
func LoadJobConfig(path string) (JobConfig, error) {
	cfg := DefaultJobConfig()
	md, err := toml.DecodeFile(path, &cfg)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return JobConfig{}, fmt.Errorf("config %s: line %d: %s", path, pe.Position.Line, pe.Message)
		}
		return JobConfig{}, fmt.Errorf("config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		sort.Strings(keys)
		return JobConfig{}, fmt.Errorf("config %s: unknown key(s): %s", path, strings.Join(keys, ", "))
	}
	if err := cfg.Validate(); err != nil {
		return JobConfig{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}
