package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/internal/testkit"
	"github.com/moetrain/moetrain/train"
)

// TestExportEndToEnd runs `coordinator export` on a trained checkpoint and
// checks the file with scripts/read_safetensors.py (an independent reader)
// against the trainer's parameters: names, shapes, exact bytes (CRC-32),
// sums and metadata.
func TestExportEndToEnd(t *testing.T) {
	store, err := checkpoint.NewStore(filepath.Join(t.TempDir(), "ckpt"), 0)
	if err != nil {
		t.Fatal(err)
	}
	store.NoSync = true
	tr := trainedCheckpoint(t, store, 3)
	out := filepath.Join(t.TempDir(), "model.safetensors")
	var stdout bytes.Buffer
	rootCmd.SetArgs([]string{"export", "--checkpoint", store.Dir() + ":latest", "--out", out})
	rootCmd.SetOut(&stdout)
	defer rootCmd.SetArgs(nil)
	defer rootCmd.SetOut(nil)
	if err := rootCmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), fmt.Sprintf("exported %d tensors of step 3", len(tr.Layout().Entries))) {
		t.Fatalf("output %q", stdout.String())
	}

	expect := testkit.SafetensorsExpect{Tensors: map[string]testkit.TensorSummary{},
		Metadata: map[string]string{"step": "3", "format": "pt", "source": store.StepDir(3)}}
	for _, e := range tr.Layout().Entries {
		expect.Tensors[e.Name] = testkit.Summarize(e.Shape, e.Slice(tr.Params()))
	}
	reader := testkit.NewSafetensorsReader(t)
	if err := reader.Check(t, out, expect); err != nil {
		t.Fatal(err)
	}
	// The comparison is not a rubber stamp: other weights fail it.
	tr.Params()[0] += 1
	e := tr.Layout().Entries[0]
	expect.Tensors[e.Name] = testkit.Summarize(e.Shape, e.Slice(tr.Params()))
	if err := reader.Check(t, out, expect); err == nil {
		t.Fatal("python reader accepted weights that differ")
	}
	// The job config travels in the metadata.
	meta, err := reader.Metadata(out)
	if err != nil {
		t.Fatal(err)
	}
	var cfg train.JobConfig
	if err := json.Unmarshal([]byte(meta["moetrain.config"]), &cfg); err != nil || cfg.Model.DModel != 32 {
		t.Fatalf("moetrain.config metadata %q: %v", meta["moetrain.config"], err)
	}
}

// TestExportErrors: bad flags and checkpoints give errors naming the
// problem; a damaged newest checkpoint is skipped with a warning.
func TestExportErrors(t *testing.T) {
	store, err := checkpoint.NewStore(filepath.Join(t.TempDir(), "ckpt"), 0)
	if err != nil {
		t.Fatal(err)
	}
	store.NoSync = true
	trainedCheckpoint(t, store, 1)
	trainedCheckpoint(t, store, 2)
	tmp := t.TempDir()
	existing := filepath.Join(tmp, "exists.safetensors")
	if err := os.WriteFile(existing, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		o    exportOptions
		want string
	}{
		{exportOptions{out: filepath.Join(tmp, "a")}, "--checkpoint is required"},
		{exportOptions{checkpoint: store.Dir()}, "--out is required"},
		{exportOptions{checkpoint: store.Dir(), out: existing}, "exists (use --force"},
		{exportOptions{checkpoint: store.Dir(), out: tmp}, "is a directory"},
		{exportOptions{checkpoint: store.Dir(), out: filepath.Join(tmp, "no", "m.safetensors")}, "does not exist"},
		{exportOptions{checkpoint: filepath.Join(tmp, "missing"), out: filepath.Join(tmp, "b")}, "no such file"},
		{exportOptions{checkpoint: store.Dir() + ":7", out: filepath.Join(tmp, "c")}, checkpoint.StepName(7)},
		{exportOptions{checkpoint: store.Dir() + ":first", out: filepath.Join(tmp, "d")}, `neither "latest" nor a step number`},
	} {
		var so, se bytes.Buffer
		err := runExport(&so, &se, tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("export %+v: error %v, want it to contain %q", tc.o, err, tc.want)
		}
	}

	// Flip one bit in the newest shard: the directory form falls back to step
	// 1 and warns; naming step 2 fails naming the shard.
	shard := filepath.Join(store.StepDir(2), checkpoint.ShardName(0))
	b, err := os.ReadFile(shard)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	if err := os.WriteFile(shard, b, 0o644); err != nil {
		t.Fatal(err)
	}
	var so, se bytes.Buffer
	if err := runExport(&so, &se, exportOptions{checkpoint: store.Dir(), out: existing, force: true}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(so.String(), "of step 1") || !strings.Contains(se.String(), "skipped step 2") {
		t.Fatalf("fallback export: stdout %q, stderr %q", so.String(), se.String())
	}
	err = runExport(&so, &se, exportOptions{checkpoint: store.StepDir(2), out: filepath.Join(tmp, "e")})
	if err == nil || !strings.Contains(err.Error(), shard) {
		t.Fatalf("export of the damaged step: %v, want an error naming %s", err, shard)
	}
}
