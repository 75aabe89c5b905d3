package train

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/tokenizer"
)

// writeTokenizer trains a small BPE on the documents of dir and writes it.
func writeTokenizer(t *testing.T, dir string, vocab int) (string, *tokenizer.BPE) {
	t.Helper()
	docs, err := sampling.ReadDocuments(dir, "text")
	if err != nil {
		t.Fatal(err)
	}
	tk, _, err := tokenizer.Train(func(yield func([]byte) bool) {
		for _, d := range docs {
			if !yield(sampling.ByteDetokenize(d.Tokens)) {
				return
			}
		}
	}, tokenizer.TrainOptions{VocabSize: vocab})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "tok.json")
	if err := tk.WriteFile(p); err != nil {
		t.Fatal(err)
	}
	return p, tk
}

func TestJobConfigTokenizerVocab(t *testing.T) {
	data := writeTextData(t, 30, 3)
	tokPath, tk := writeTokenizer(t, data, 300)
	cfg := smallJob()
	cfg.Data.Path, cfg.Data.Tokenizer = data, tokPath
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), "model.vocab = 256, but data.tokenizer") {
		t.Fatalf("vocab 256 with a %d-token tokenizer: %v", tk.VocabSize(), err)
	}
	cfg.Model.Vocab = 0
	cfg.ResolveVocab()
	if cfg.Model.Vocab != tk.VocabSize() {
		t.Fatalf("ResolveVocab: %d, want %d", cfg.Model.Vocab, tk.VocabSize())
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	// from TOML: model.vocab = 0 takes the tokenizer's
	job := filepath.Join(t.TempDir(), "job.toml")
	toml := "[model]\nvocab = 0\n[data]\npath = \"" + data + "\"\ntokenizer = \"" + tokPath + "\"\n"
	if err := os.WriteFile(job, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadJobConfig(job)
	if err != nil || loaded.Model.Vocab != tk.VocabSize() {
		t.Fatalf("LoadJobConfig: vocab %d, %v; want %d", loaded.Model.Vocab, err, tk.VocabSize())
	}
	cfg.Data.Tokenizer = filepath.Join(t.TempDir(), "missing.json")
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "data.tokenizer") {
		t.Fatalf("missing tokenizer: %v", err)
	}
}

// With a BPE tokenizer, bits per byte divide the total loss by the bytes
// the target tokens decode to, not by the number of targets.
func TestEvaluateCheckpointBitsPerByteBPE(t *testing.T) {
	cfg := smallJob()
	cfg.Data.Path = writeTextData(t, 30, 3)
	cfg.Data.ValFraction = 0.2
	tokPath, tk := writeTokenizer(t, cfg.Data.Path, 300)
	cfg.Data.Tokenizer, cfg.Model.Vocab = tokPath, tk.VocabSize()
	cfg.Train.Steps, cfg.Train.EvalEvery, cfg.Train.EvalBatches = 2, 2, 2
	ckpt := t.TempDir()
	sum, err := Run(context.Background(), cfg, RunOptions{Log: zerolog.Nop(), Checkpoint: CheckpointOptions{Dir: ckpt}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := EvaluateCheckpoint(EvalOptions{Checkpoint: ckpt, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(res.Loss-sum.Val[len(sum.Val)-1].Loss) > 1e-6 {
		t.Fatalf("eval loss %v, run logged %v", res.Loss, sum.Val[len(sum.Val)-1].Loss)
	}
	// the bytes of the targets, counted by decoding them
	d, err := sampling.Open(cfg.DataConfig(), cfg.Train.Seed)
	if err != nil {
		t.Fatal(err)
	}
	val, err := d.ValBatches(cfg.Train.EvalBatches)
	if err != nil {
		t.Fatal(err)
	}
	var bytes int64
	for _, b := range val {
		for _, tg := range b.Targets {
			if tg >= 0 {
				text, err := tk.Decode([]int32{tg})
				if err != nil {
					t.Fatal(err)
				}
				bytes += int64(len(text))
			}
		}
	}
	if res.TargetBytes != bytes || bytes <= res.Targets {
		t.Fatalf("target bytes %d, decoded %d, targets %d: want equal bytes, more than the targets", res.TargetBytes, bytes, res.Targets)
	}
	want := res.Loss * float64(res.Targets) / (math.Ln2 * float64(bytes))
	if math.Abs(res.BitsPerByte-want) > 1e-12*want || res.BitsPerByte >= res.Loss/math.Ln2 {
		t.Fatalf("bits per byte %v, want %v (below the per-token %v)", res.BitsPerByte, want, res.Loss/math.Ln2)
	}
}
