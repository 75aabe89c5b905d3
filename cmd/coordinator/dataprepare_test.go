package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/sampling/tokshard"
	"github.com/moetrain/moetrain/train"
)

// A directory with empty files, a binary file, a non-UTF-8 file and a
// .jsonl.zst file is prepared by `data prepare`, trains a few steps in every
// mode from the prepared directory, and the summary names what was skipped
// and why (docs/dataset-format.md#coordinator-data-prepare).
func TestDataPrepareMixedDirectoryTrains(t *testing.T) {
	in := t.TempDir()
	write := func(name string, b []byte) {
		p := filepath.Join(in, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	prose := strings.Repeat("Training reads prepared shards through memory maps. ", 40)
	write("docs/a.txt", []byte(prose))
	write("docs/b.md", []byte(strings.Repeat("# heading\nsome — unicode text, ünïcode.\n", 30)))
	write("docs/empty1.txt", nil)
	write("pkg/__init__.py", nil)
	write("bin/tool", append([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0}, make([]byte, 64)...))
	write("latin1.txt", []byte("caf\xe9 cr\xe8me br\xfbl\xe9e "+prose))
	var recs bytes.Buffer
	for i := 0; i < 30; i++ {
		b, _ := json.Marshal(map[string]string{"text": prose[i:]})
		recs.Write(append(b, '\n'))
	}
	recs.WriteString(`{"text":""}` + "\n")
	var z bytes.Buffer
	zw, _ := zstd.NewWriter(&z)
	zw.Write(recs.Bytes())
	zw.Close()
	write("recs.jsonl.zst", z.Bytes())

	out := filepath.Join(t.TempDir(), "prepared")
	var stdout bytes.Buffer
	rootCmd.SetOut(&stdout)
	rootCmd.SetErr(&bytes.Buffer{})
	rootCmd.SetArgs([]string{"data", "prepare", "--data", in, "--out", out, "--workers", "3"})
	if err := rootCmd.Execute(); err != nil {
		t.Fatal(err)
	}
	var s tokshard.Summary
	b, err := os.ReadFile(filepath.Join(out, tokshard.SummaryFile))
	if err != nil || json.Unmarshal(b, &s) != nil {
		t.Fatalf("summary: %v", err)
	}
	want := map[string]string{
		"docs/empty1.txt": "empty", "pkg/__init__.py": "empty", "bin/tool": "binary",
		"latin1.txt": "non-utf8", "recs.jsonl.zst:31": "empty-record",
	}
	for _, sk := range s.Skipped {
		rel, _ := filepath.Rel(in, sk.Path)
		if want[rel] != sk.Reason || sk.Detail == "" {
			t.Errorf("skipped %s: %s (%s), want %q with a detail", rel, sk.Reason, sk.Detail, want[rel])
		}
		delete(want, rel)
	}
	if len(want) != 0 {
		t.Errorf("not named as skipped: %v", want)
	}
	if s.FilesIngested != 3 || s.Docs != 32 || s.SkippedFiles["empty"] != 2 || s.SkippedFiles["binary"] != 1 || s.SkippedFiles["non-utf8"] != 1 {
		t.Errorf("summary: %d files ingested, %d documents, skipped %v; want 3, 32, 2 empty, 1 binary, 1 non-utf8", s.FilesIngested, s.Docs, s.SkippedFiles)
	}
	for _, reason := range []string{"2 empty", "1 binary", "1 non-utf8", "1 empty-record"} {
		if !strings.Contains(stdout.String(), reason) {
			t.Errorf("printed summary %q lacks %q", stdout.String(), reason)
		}
	}

	for _, mode := range []string{"window", "pack", "bucket"} {
		cfg := train.DefaultJobConfig()
		cfg.Model.DModel, cfg.Model.Heads, cfg.Model.Layers = 32, 2, 2
		cfg.Model.SeqLen, cfg.Model.Experts, cfg.Model.ExpertHidden = 32, 4, 48
		cfg.Data.Path, cfg.Data.Mode, cfg.Data.SeqLen, cfg.Data.BatchSize = out, mode, 32, 4
		cfg.Train.Steps, cfg.Train.Threads, cfg.Train.EvalEvery, cfg.Train.EvalBatches = 4, 1, 2, 2
		sum, err := train.Run(t.Context(), cfg, train.RunOptions{Log: zerolog.Nop()})
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		if sum.Steps != 4 || sum.Targets == 0 || len(sum.Val) == 0 {
			t.Errorf("%s: %d steps, %d targets, %d validations; want 4 steps with targets and validation", mode, sum.Steps, sum.Targets, len(sum.Val))
		}
	}
}
