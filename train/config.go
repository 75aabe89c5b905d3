// Package train is one rank's training loop: the job configuration, the
// Trainer (forward/backward, optimizer step, evaluation) that the control
// plane drives, and Run, the standalone loop.
//
// It must not talk to the control plane: cluster/worker drives a rank and
// reports for it.
package train

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/optim"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/parallel/dp"
	"github.com/moetrain/moetrain/parallel/sp"
	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/spsa"
	"github.com/moetrain/moetrain/tokenizer"
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
	// Device runs the model on "cpu" or "cuda" (one GPU; "" = "cpu", the
	// zero value of a config decoded without defaults).
	Device string `toml:"device"`
	// Precision is "fp32" or "bf16" (cuda only: bf16 matmuls, fp32 master
	// weights); "" = "fp32".
	Precision string `toml:"precision"`
	// GPU is the CUDA device ordinal of a standalone run.
	GPU int `toml:"gpu"`
	// Mode is how parameters are updated: "backprop" (gradients and the
	// optimizer; "" too) or "spsa" (zeroth-order fine-tuning with the
	// [spsa] section; see docs/algorithms/spsa.md).
	Mode string `toml:"mode"`
}

// Devices and precisions of Config.
const (
	DeviceCPU     = "cpu"
	DeviceCUDA    = "cuda"
	PrecisionFP32 = "fp32"
	PrecisionBF16 = "bf16"
	ModeBackprop  = "backprop"
	ModeSPSA      = "spsa"
)

// DefaultConfig: 1000 steps, seed 1, validation every 100 steps on 8
// batches, a log line every 10 steps, fp32 on the CPU.
func DefaultConfig() Config {
	return Config{Steps: 1000, Seed: 1, Threads: 0, EvalEvery: 100, EvalBatches: 8, LogEvery: 10,
		Device: DeviceCPU, Precision: PrecisionFP32, GPU: 0, Mode: ModeBackprop}
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
	switch c.Device {
	case "", DeviceCPU, DeviceCUDA:
	default:
		errs = append(errs, fmt.Errorf("train.device = %q: want %q or %q", c.Device, DeviceCPU, DeviceCUDA))
	}
	switch c.Precision {
	case "", PrecisionFP32:
	case PrecisionBF16:
		if c.Device != DeviceCUDA {
			errs = append(errs, fmt.Errorf("train.precision = %q needs train.device = %q, not %q", c.Precision, DeviceCUDA, c.Device))
		}
	default:
		errs = append(errs, fmt.Errorf("train.precision = %q: want %q or %q", c.Precision, PrecisionFP32, PrecisionBF16))
	}
	if c.GPU < 0 {
		errs = append(errs, fmt.Errorf("train.gpu = %d: must be >= 0", c.GPU))
	}
	switch c.Mode {
	case "", ModeBackprop:
	case ModeSPSA: // the job-level checks: validateSPSA
	default:
		errs = append(errs, fmt.Errorf("train.mode = %q: want %q or %q", c.Mode, ModeBackprop, ModeSPSA))
	}
	return errors.Join(errs...)
}

// ErrCUDAOneRank is the error of a cuda job laid out over more than one rank.
var ErrCUDAOneRank = errors.New(`train.device = "cuda" supports one rank (multi-GPU is not implemented yet)`)

// JobConfig is a whole job: one TOML file with a section per component.
type JobConfig struct {
	Model model.Config    `toml:"model"`
	Optim optim.Config    `toml:"optim"`
	Data  sampling.Config `toml:"data"`
	Mesh  parallel.Config `toml:"mesh"`
	DP    dp.Config       `toml:"dp"`
	Train Config          `toml:"train"`
	SPSA  spsa.Config     `toml:"spsa"`
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
		SPSA:  spsa.DefaultConfig(),
	}
}

// DataConfig is the [data] section as training uses it: in random mode a
// data.vocab of 0 becomes model.vocab. Every sampling.Open of a job should
// take this rather than j.Data (LoadJobConfig already stores it in j.Data).
func (j JobConfig) DataConfig() sampling.Config {
	d := j.Data
	if d.Mode == sampling.ModeRandom && d.Vocab == 0 {
		d.Vocab = j.Model.Vocab
	}
	return d
}

// Validate checks every section and the constraints between them.
func (j JobConfig) Validate() error {
	data := j.DataConfig()
	modelErr := j.Model.Validate()
	errs := []error{modelErr, j.Optim.Validate(), data.Validate(), j.Train.Validate(), j.DP.Validate(), j.SPSA.Validate(), validateMesh(j.Mesh, j.Model), validateSequenceParallel(j), validateDevice(j), validateSPSA(j)}
	if modelErr == nil {
		errs = append(errs, validateMemory(j))
	}
	errs = append(errs, validateTokenizer(j))
	if data.Mode == sampling.ModeRandom && j.Model.Vocab >= 1 && data.Vocab > j.Model.Vocab {
		errs = append(errs, fmt.Errorf("data.vocab = %d exceeds model.vocab = %d: token ids must index the embedding", data.Vocab, j.Model.Vocab))
	}
	longest := j.Data.SeqLen
	if j.Data.Mode == sampling.ModeBucket {
		longest = j.Data.EffectiveMaxLen()
	}
	if longest > j.Model.SeqLen {
		errs = append(errs, fmt.Errorf("data sequences of up to %d positions (data.seq_len / data.max_len) exceed model.seq_len = %d, the position table size", longest, j.Model.SeqLen))
	}
	return errors.Join(errs...)
}

// MaxBatchTokens bounds the input positions of one data-parallel
// replica's batch, for training and validation: data.batch_size ×
// data.seq_len for fixed-length rows (window, pack, random), the token
// budget in bucket mode (a batch's examples × its longest ≤ budget). It is
// at most model.MaxRankMemory (larger configurations do not validate).
func (j JobConfig) MaxBatchTokens() int {
	return int(min(maxBatchTokens(j.Data), model.MaxRankMemory))
}

// maxBatchTokens is MaxBatchTokens unbounded, in float64 so that no
// configuration overflows it.
func maxBatchTokens(d sampling.Config) float64 {
	if d.Mode == sampling.ModeBucket && d.Budget > 0 {
		return float64(d.Budget)
	}
	return float64(max(d.BatchSize, 1)) * float64(max(d.SeqLen, 1))
}

// validateMemory refuses a job that would need more than
// model.MaxRankMemory on one rank (model.EstimateMemory for the rank's
// shard and share of a batch), before any worker allocates it: the error
// carries the estimate. Below that bound no size the model computes
// overflows int.
func validateMemory(j JobConfig) error {
	tokens := math.Ceil(maxBatchTokens(j.Data) / float64(max(j.Mesh.SP, 1)))
	sh := model.Shard{TP: max(j.Mesh.TP, 1), EP: max(j.Mesh.EP, 1)}
	if err := model.EstimateMemory(j.Model, sh, tokens).Check(); err != nil {
		return fmt.Errorf("model.d_model = %d, model.layers = %d, model.experts = %d, model.expert_hidden = %d, model.vocab = %d, model.seq_len = %d with %.4g tokens per rank (data.batch_size × data.seq_len, or data.budget, over mesh.sp): %w",
			j.Model.DModel, j.Model.Layers, j.Model.Experts, j.Model.ExpertHidden, j.Model.Vocab, j.Model.SeqLen, tokens, err)
	}
	return nil
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

// validateTokenizer checks that model.vocab is the vocabulary of a BPE
// data.tokenizer: token ids index the embedding, and a larger embedding
// would hold rows no token trains. LoadJobConfig fills a model.vocab of 0
// in from the tokenizer (ResolveVocab). The byte tokenizer is not checked
// (random mode and tests use other vocabularies).
func validateTokenizer(j JobConfig) error {
	if tokenizer.IsByte(j.Data.Tokenizer) || j.Data.Mode == sampling.ModeRandom {
		return nil
	}
	tk, err := tokenizer.Open(j.Data.Tokenizer)
	if err != nil {
		return fmt.Errorf("data.tokenizer: %w", err)
	}
	if j.Model.Vocab != tk.VocabSize() {
		return fmt.Errorf("model.vocab = %d, but data.tokenizer %s has %d tokens: set model.vocab = %d (or 0 to take it from the tokenizer)", j.Model.Vocab, j.Data.Tokenizer, tk.VocabSize(), tk.VocabSize())
	}
	return nil
}

// ResolveVocab sets a model.vocab of 0 to the vocabulary size of a BPE
// data.tokenizer (an unreadable tokenizer is left to Validate to report).
func (j *JobConfig) ResolveVocab() {
	if j.Model.Vocab != 0 || tokenizer.IsByte(j.Data.Tokenizer) {
		return
	}
	if tk, err := tokenizer.Open(j.Data.Tokenizer); err == nil {
		j.Model.Vocab = tk.VocabSize()
	}
}

// validateSequenceParallel checks what SP > 1 needs of the data: whole
// windows of a length that splits into 2·SP equal zigzag chunks.
func validateSequenceParallel(j JobConfig) error {
	if j.Mesh.SP <= 1 {
		return nil
	}
	if !j.Data.FixedShape() {
		return fmt.Errorf("mesh.sp = %d needs data.mode = %q or %q (fixed-length windows), not %q", j.Mesh.SP, sampling.ModeWindow, sampling.ModeRandom, j.Data.Mode)
	}
	if j.Data.SeqLen%(2*j.Mesh.SP) != 0 {
		return fmt.Errorf("mesh.sp = %d: data.seq_len = %d must be a multiple of 2·sp = %d (zigzag chunks)", j.Mesh.SP, j.Data.SeqLen, 2*j.Mesh.SP)
	}
	return nil
}

// validateSPSA checks what train.mode = "spsa" needs (docs/algorithms/spsa.md):
// a checkpoint to start from and replicas that each hold the whole model,
// on the CPU or a GPU each (its runner, worker.RunSPSA in cluster/worker, runs under
// coordinator launch only; the standalone trainer refuses it).
func validateSPSA(j JobConfig) error {
	if j.Train.Mode != ModeSPSA {
		return nil
	}
	var errs []error
	if strings.TrimSpace(j.SPSA.InitFrom) == "" {
		errs = append(errs, fmt.Errorf(`train.mode = "spsa" needs spsa.init_from: the checkpoint to fine-tune (DIR, DIR:latest, DIR:STEP or a step directory)`))
	}
	if m := j.Mesh; m.TP > 1 || m.SP > 1 || m.EP > 1 {
		errs = append(errs, fmt.Errorf(`train.mode = "spsa": mesh.tp = %d, mesh.sp = %d, mesh.ep = %d, want 1 (every SPSA worker holds the whole model)`, m.TP, m.SP, m.EP))
	}
	if j.Model.BiasUpdateRate != 0 {
		errs = append(errs, fmt.Errorf(`train.mode = "spsa": model.bias_update_rate = %g, want 0 (routing biases are not replayed by SPSA)`, j.Model.BiasUpdateRate))
	}
	return errors.Join(errs...)
}

// validateDevice refuses a cuda job whose mesh has more than one rank. With
// mesh.dp = 0 (auto) the rank count is only known at launch, where
// cluster.CheckLayout refuses more than one worker. SPSA replicas need no
// collective between GPUs (their exchange is a few bytes over the data
// plane), so an SPSA job may have any number of GPU ranks.
func validateDevice(j JobConfig) error {
	if j.Train.Device != DeviceCUDA || j.Train.Mode == ModeSPSA {
		return nil
	}
	m := j.Mesh
	if m.DP > 1 || m.TP > 1 || m.SP > 1 || m.EP > 1 {
		return fmt.Errorf("%w: mesh.dp = %d, mesh.tp = %d, mesh.sp = %d, mesh.ep = %d, want 1 (or dp = 0 with one worker)", ErrCUDAOneRank, m.DP, m.TP, m.SP, m.EP)
	}
	// The GPU backend implements the standard layout with no EP exchange.
	if j.Model.DCCA() {
		return fmt.Errorf(`model.moe_layout = "dcca": train.device = "cuda" implements only the "standard" layout`)
	}
	if dt := j.Model.DispatchDType; dt != "" && dt != "fp32" {
		return fmt.Errorf(`model.dispatch_dtype = %q: train.device = "cuda" has no expert-parallel dispatch to quantize (want "fp32")`, dt)
	}
	return nil
}

// LoadJobConfig reads a job TOML file over the defaults: keys it leaves out
// keep their defaults, unknown keys are an error naming them, data.vocab is
// resolved (DataConfig), and the result is validated.
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
	cfg.ResolveVocab()          // before DataConfig: random mode's data.vocab may come from it
	cfg.Data = cfg.DataConfig() // the vocab is explicit in what the job hands on (workers, checkpoints)
	if err := cfg.Validate(); err != nil {
		return JobConfig{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}
