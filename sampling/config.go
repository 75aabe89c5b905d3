package sampling

import (
	"errors"
	"fmt"
	"math"
	"os"

	"github.com/moetrain/moetrain/tokenizer"
)

// Sampling modes.
const (
	ModeWindow = "window" // random fixed-length windows of the concatenated documents
	ModeBucket = "bucket" // whole documents, length-bucketed dynamic batches under a token budget
	ModePack   = "pack"   // documents packed into full rows, segment ids and positions restart per document
	ModeRandom = "random" // uniformly random token ids in [0, Vocab), no corpus: synthetic data for throughput runs
)

// MaxRandomVocab is the largest data.vocab of random mode: token ids are int32.
const MaxRandomVocab = 1<<31 - 1

// Too-long example policies.
const (
	TooLongSplit    = "split"    // cut into pieces of at most max_len positions (each prediction kept once)
	TooLongTruncate = "truncate" // keep the first max_len positions, drop the rest
)

// Config is the [data] section of the job TOML. Zero values of the optional
// fields mean "use the default" as noted; DefaultConfig fills them in.
type Config struct {
	// Path of the data: "" or "embedded" = the embedded corpus; else a text
	// file, a directory or a .jsonl file (see LoadCorpus). Default "".
	Path string `toml:"path"`
	// ValFraction of user documents held out for validation. Default 0.05.
	ValFraction float64 `toml:"val_fraction"`
	// TextField is the JSONL field holding a document's text. Default "text".
	TextField string `toml:"text_field"`
	// InputField and OutputField, when both set, make examples two-length
	// (input, output) from two JSONL text fields: the row is input followed by
	// output and only output tokens are predicted. Default "" (one length).
	InputField  string `toml:"input_field"`
	OutputField string `toml:"output_field"`
	// InputLenField and OutputLenField, when both set, read two-length
	// examples as bare lengths (no text): usable for data-stats and batch
	// planning, not for training. Default "".
	InputLenField  string `toml:"input_len_field"`
	OutputLenField string `toml:"output_len_field"`

	// Tokenizer is "byte" (every byte a token, vocabulary 256) or the path
	// of a byte-level BPE tokenizer.json (docs/tokenizer.md); model.vocab
	// must be its vocabulary size. Text data is encoded with it when
	// loaded; a prepared dataset must have been prepared with it. Default
	// "" = "byte".
	Tokenizer string `toml:"tokenizer"`

	// Mode is "window", "bucket", "pack" or "random". Default "window".
	Mode string `toml:"mode"`
	// Vocab is random mode's vocabulary: token ids are drawn from
	// [0, Vocab); 0 = the model's vocabulary (filled in by the job config,
	// train.JobConfig, since this section does not know the model). Other
	// modes ignore it. Default 0.
	Vocab int `toml:"vocab"`
	// SeqLen is the row length of window, pack and random batches. Default
	// 256.
	SeqLen int `toml:"seq_len"`
	// BatchSize is the rows per batch per data-parallel rank in window, pack
	// and random modes. Default 8.
	BatchSize int `toml:"batch_size"`
	// MaxLen is the longest example in bucket mode, in positions (a row of L
	// positions holds L+1 tokens' worth of inputs and targets). Default 0 =
	// SeqLen. Pack mode cuts documents at SeqLen regardless.
	MaxLen int `toml:"max_len"`
	// TooLong is "split" or "truncate" for bucket-mode examples longer than
	// MaxLen. Default "split".
	TooLong string `toml:"too_long"`
	// Budget is the cost allowed per batch per data-parallel rank in bucket
	// mode: count × cost(longest) ≤ Budget, cost(L) = L (+ L²/QuadraticQ).
	// Padding counts. Default 0 = SeqLen × BatchSize.
	Budget int `toml:"budget"`
	// Buckets is the number of length buckets, bounds at equal total tokens
	// (equal bounds merge, so there may be fewer). Many narrow buckets keep
	// padding low; examples of a bucket's last, partial step move on to the
	// next bucket, so narrow buckets cost little. Default 64.
	Buckets int `toml:"buckets"`
	// Buckets2 splits each bucket again by output length (two-length data
	// only), at equal output tokens. Default 2.
	Buckets2 int `toml:"buckets2"`
	// QuadraticQ adds L²/q to an example's cost to model attention; 0 = off.
	// Default 0.
	QuadraticQ float64 `toml:"quadratic_q"`
	// MaxExamples caps examples per batch; 0 = no cap. Default 0.
	MaxExamples int `toml:"max_examples"`
	// BucketBatchFile, when set, names a file of lines "upper_len batch_size"
	// (or "upper_in upper_out batch_size" for two-length data; '#' starts a
	// comment) giving the bucket bounds and a fixed maximum examples per batch
	// for each bucket, replacing the estimated bounds. Default "".
	BucketBatchFile string `toml:"bucket_batch_file"`
	// BoundarySample is how many examples (seeded sample) estimate the bucket
	// bounds; 0 = all. Default 20000.
	BoundarySample int `toml:"boundary_sample"`
	// SeedOffset is added to the job seed to seed the sampler, so data order
	// can change without changing the model's initialisation. Default 0.
	SeedOffset uint64 `toml:"seed_offset"`
}

// DefaultConfig returns the defaults documented on Config's fields.
func DefaultConfig() Config {
	return Config{
		ValFraction:    0.05,
		TextField:      "text",
		Mode:           ModeWindow,
		SeqLen:         256,
		BatchSize:      8,
		TooLong:        TooLongSplit,
		Buckets:        64,
		Buckets2:       2,
		BoundarySample: 20000,
	}
}

// WithDefaults returns c with zero optional fields replaced by defaults.
func (c Config) WithDefaults() Config {
	d := DefaultConfig()
	if c.TextField == "" {
		c.TextField = d.TextField
	}
	if c.Mode == "" {
		c.Mode = d.Mode
	}
	if c.TooLong == "" {
		c.TooLong = d.TooLong
	}
	if c.Buckets == 0 {
		c.Buckets = d.Buckets
	}
	if c.Buckets2 == 0 {
		c.Buckets2 = d.Buckets2
	}
	if c.BoundarySample == 0 {
		c.BoundarySample = d.BoundarySample
	}
	return c
}

// FixedShape reports whether every batch of the mode is BatchSize × SeqLen
// with a target at every position and no segments (window and random), so
// all ranks see the same token count and a row is one whole sequence.
func (c Config) FixedShape() bool { return c.Mode == ModeWindow || c.Mode == ModeRandom }

// EffectiveMaxLen is MaxLen, or SeqLen when MaxLen is 0.
func (c Config) EffectiveMaxLen() int {
	if c.MaxLen > 0 {
		return c.MaxLen
	}
	return c.SeqLen
}

// EffectiveBudget is Budget, or SeqLen × BatchSize when Budget is 0.
func (c Config) EffectiveBudget() int {
	if c.Budget > 0 {
		return c.Budget
	}
	return c.SeqLen * c.BatchSize
}

// TwoD reports whether examples carry two lengths (input, output).
func (c Config) TwoD() bool {
	return (c.InputField != "" && c.OutputField != "") || (c.InputLenField != "" && c.OutputLenField != "")
}

// Validate checks every field; the error names the field ("data.budget") and
// what is expected. It does not read files other than checking that
// BucketBatchFile exists.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch c.Mode {
	case ModeWindow, ModeBucket, ModePack:
	case ModeRandom:
		// Validate sees the section after the job config filled a 0 in from
		// model.vocab, so a 0 here means nobody did.
		if c.Vocab < 1 || c.Vocab > MaxRandomVocab {
			bad("data.vocab = %d with data.mode = %q, want 1..%d (0 is replaced by model.vocab only in a job config)", c.Vocab, c.Mode, MaxRandomVocab)
		}
	default:
		bad("data.mode = %q, want \"window\", \"bucket\", \"pack\" or \"random\"", c.Mode)
	}
	if c.SeqLen <= 0 {
		bad("data.seq_len = %d, want > 0", c.SeqLen)
	}
	if c.BatchSize <= 0 {
		bad("data.batch_size = %d, want > 0", c.BatchSize)
	}
	if math.IsNaN(c.ValFraction) || c.ValFraction < 0 || c.ValFraction >= 1 {
		bad("data.val_fraction = %v, want 0 <= f < 1", c.ValFraction)
	}
	if c.TextField == "" {
		bad("data.text_field is empty")
	}
	if (c.InputField == "") != (c.OutputField == "") {
		bad("data.input_field = %q, data.output_field = %q: set both or neither", c.InputField, c.OutputField)
	}
	if (c.InputLenField == "") != (c.OutputLenField == "") {
		bad("data.input_len_field = %q, data.output_len_field = %q: set both or neither", c.InputLenField, c.OutputLenField)
	}
	if c.InputField != "" && c.InputLenField != "" {
		bad("data.input_field and data.input_len_field are both set: choose text fields or length fields")
	}
	if c.TwoD() && c.Mode != ModeBucket {
		bad("two-length data (data.input_field/output_field) needs mode \"bucket\", not %q", c.Mode)
	}
	if c.MaxLen < 0 {
		bad("data.max_len = %d, want >= 0 (0 = seq_len)", c.MaxLen)
	}
	switch c.TooLong {
	case TooLongSplit, TooLongTruncate:
	default:
		bad("data.too_long = %q, want \"split\" or \"truncate\"", c.TooLong)
	}
	if c.Budget < 0 {
		bad("data.budget = %d, want >= 0 (0 = seq_len × batch_size)", c.Budget)
	}
	if c.Buckets <= 0 || c.Buckets > 1024 {
		bad("data.buckets = %d, want 1..1024", c.Buckets)
	}
	if c.Buckets2 <= 0 || c.Buckets2 > 64 {
		bad("data.buckets2 = %d, want 1..64", c.Buckets2)
	}
	if math.IsNaN(c.QuadraticQ) || math.IsInf(c.QuadraticQ, 0) || c.QuadraticQ < 0 {
		bad("data.quadratic_q = %v, want >= 0 (0 = off)", c.QuadraticQ)
	}
	if c.MaxExamples < 0 {
		bad("data.max_examples = %d, want >= 0 (0 = no cap)", c.MaxExamples)
	}
	if c.BoundarySample < 0 {
		bad("data.boundary_sample = %d, want >= 0 (0 = all examples)", c.BoundarySample)
	}
	if !tokenizer.IsByte(c.Tokenizer) {
		if _, err := os.Stat(c.Tokenizer); err != nil {
			bad("data.tokenizer: %v (want \"byte\" or a tokenizer.json)", err)
		}
	}
	if c.BucketBatchFile != "" {
		if _, err := os.Stat(c.BucketBatchFile); err != nil {
			bad("data.bucket_batch_file: %v", err)
		}
	}
	if len(errs) == 0 && c.Mode == ModeBucket {
		maxLen := c.EffectiveMaxLen()
		if cost := exampleCost(maxLen, c.QuadraticQ); cost > float64(c.EffectiveBudget()) {
			bad("data.budget = %d cannot hold one example of max_len %d (cost %.0f)", c.EffectiveBudget(), maxLen, cost)
		}
	}
	return errors.Join(errs...)
}

// exampleCost is the per-row cost of a row of L positions.
func exampleCost(l int, q float64) float64 {
	c := float64(l)
	if q > 0 {
		c += float64(l) * float64(l) / q
	}
	return c
}
