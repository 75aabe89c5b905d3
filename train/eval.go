package train

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/tensor"
)

// EvalOptions configure EvaluateCheckpoint.
type EvalOptions struct {
	// Checkpoint is the checkpoint to evaluate: a step directory, a
	// checkpoint directory (its newest intact step) or DIR:STEP / DIR:latest
	// (see OpenRef).
	Checkpoint string
	// Data replaces the job's data.path ("" = the data the checkpoint's job
	// trained on; "embedded" or a path as data.path takes). The job's other
	// [data] settings (mode, seq_len, batch_size, val_fraction, ...) apply.
	Data string
	// Device is "cpu" ("" too) or "cuda" (one GPU, the job's train.gpu and
	// train.precision); on the CPU the model runs in fp32.
	Device string
	// Batches is the number of validation batches; 0 = the job's
	// train.eval_batches (what the run's validation used).
	Batches int
	// Threads is the kernel thread budget; 0 = all cores.
	Threads int
	Log     zerolog.Logger
}

// EvalResult is a checkpoint's loss on a data set's validation batches.
type EvalResult struct {
	Dir     string // the step directory evaluated
	Step    int64  // its step
	Data    string // the corpus (data.path, or the embedded corpus's name)
	Mode    string // data.mode
	Device  string
	Batches int   // validation batches evaluated
	Targets int64 // target tokens the loss averages over
	// TargetBytes is the number of text bytes the target tokens decode to
	// (Targets with the byte tokenizer).
	TargetBytes int64
	// Loss is the mean cross-entropy in nats per target token: the
	// validation loss training logs (no aux or z-loss).
	Loss float64
	// BitsPerByte is the loss in bits per byte of target text: total nats /
	// (ln 2 × TargetBytes), so runs with different tokenizers compare
	// (Loss/ln 2 with the byte tokenizer); NaN in random mode, whose tokens
	// are not text.
	BitsPerByte float64
	// Report says which checkpoint a directory resolved to and which newer,
	// damaged ones were skipped (nil for a step directory).
	Report *checkpoint.OpenReport
}

// EvaluateCheckpoint loads a checkpoint with the job configuration its
// manifest records, builds the whole model on one rank (whatever mesh
// trained it) and returns the mean cross-entropy over the validation
// batches of the data: the held-out documents of data.path
// (data.val_fraction of them, chosen by train.seed) in the job's data.mode
// and shape, the same batches a run of the job validates on (so on its own
// data it reproduces the run's logged validation loss at that step).
func EvaluateCheckpoint(o EvalOptions) (EvalResult, error) {
	c, rep, err := OpenRef(nil, o.Checkpoint)
	if err != nil {
		return EvalResult{}, fmt.Errorf("eval: %w", err)
	}
	defer c.Close()
	res := EvalResult{Dir: c.Dir, Step: c.Step(), Report: rep}
	cfg, err := evalConfig(c, o)
	if err != nil {
		return res, err
	}
	res.Device, res.Mode = cfg.Train.Device, cfg.Data.Mode
	tensor.SetThreads(cfg.Train.Threads)
	data, err := sampling.Open(cfg.DataConfig(), cfg.Train.Seed)
	if err != nil {
		return res, fmt.Errorf("eval: data: %w", err)
	}
	res.Data = cfg.Data.Path
	if data.Corpus != nil {
		res.Data = data.Corpus.Name
	}
	val, err := data.ValBatches(cfg.Train.EvalBatches)
	if err != nil {
		return res, fmt.Errorf("eval: data %s: %w", res.Data, err)
	}
	res.Batches = len(val)
	for _, b := range val {
		for _, t := range b.Targets {
			if t >= 0 {
				res.Targets++
				res.TargetBytes += int64(data.Tokenizer.TokenLen(t))
			}
		}
	}
	tr, err := NewTrainer(cfg, o.Log)
	if err != nil {
		return res, fmt.Errorf("eval: %w", err)
	}
	defer tr.Close()
	if _, err := tr.RestoreFrom(c, 0); err != nil {
		return res, fmt.Errorf("eval: %w", err)
	}
	if res.Loss, err = tr.Evaluate(val); err != nil {
		return res, fmt.Errorf("eval: %w", err)
	}
	if err := tr.DeviceErr(); err != nil {
		return res, fmt.Errorf("eval: %w", err)
	}
	// nats/token ÷ ln 2 × tokens/byte; the ratio is exactly 1 for bytes
	res.BitsPerByte = res.Loss / math.Ln2 * (float64(res.Targets) / float64(res.TargetBytes))
	if cfg.Data.Mode == sampling.ModeRandom || res.TargetBytes == 0 {
		res.BitsPerByte = math.NaN()
	}
	return res, nil
}

// evalConfig is the checkpoint's job configuration, set up for evaluation
// on one rank with o's data, device, batch count and threads.
func evalConfig(c *checkpoint.Checkpoint, o EvalOptions) (JobConfig, error) {
	if len(c.Manifest.Config) == 0 {
		return JobConfig{}, fmt.Errorf("eval: checkpoint %s records no job configuration (manifest.json \"config\")", c.Dir)
	}
	cfg := DefaultJobConfig()
	if err := json.Unmarshal(c.Manifest.Config, &cfg); err != nil {
		return JobConfig{}, fmt.Errorf("eval: checkpoint %s: job configuration: %w", c.Dir, err)
	}
	if o.Batches < 0 {
		return JobConfig{}, fmt.Errorf("eval: %d batches: want > 0 (0 = the job's train.eval_batches)", o.Batches)
	}
	if o.Batches > 0 {
		cfg.Train.EvalBatches = o.Batches
	}
	if o.Data != "" {
		if cfg.Data.Mode == sampling.ModeRandom {
			return JobConfig{}, errors.New(`eval: the checkpoint's job trained on random tokens (data.mode = "random"), which reads no data: leave out the data path`)
		}
		cfg.Data.Path = o.Data
	}
	switch o.Device {
	case "", DeviceCPU:
		cfg.Train.Device, cfg.Train.Precision = DeviceCPU, PrecisionFP32
	case DeviceCUDA:
		cfg.Train.Device = DeviceCUDA
	default:
		return JobConfig{}, fmt.Errorf("eval: device %q: want %q or %q", o.Device, DeviceCPU, DeviceCUDA)
	}
	cfg.Mesh = parallel.DefaultConfig() // one rank holds the whole model
	cfg.Train.Threads = o.Threads
	if err := cfg.Validate(); err != nil {
		return JobConfig{}, fmt.Errorf("eval: checkpoint %s: job configuration: %w", c.Dir, err)
	}
	return cfg, nil
}
