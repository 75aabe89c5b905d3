package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moetrain/moetrain/checkpoint"
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

	type summary struct {
		Shape []int     `json:"shape"`
		CRC32 uint32    `json:"crc32"`
		Sum   float64   `json:"sum"`
		First []float64 `json:"first"`
		Last  []float64 `json:"last"`
	}
	expect := struct {
		Tensors  map[string]summary `json:"tensors"`
		Metadata map[string]string  `json:"metadata"`
	}{Tensors: map[string]summary{}, Metadata: map[string]string{"step": "3", "format": "pt", "source": store.StepDir(3)}}
	for _, e := range tr.Layout().Entries {
		d := e.Slice(tr.Params())
		sm := summary{Shape: e.Shape, CRC32: crc32.ChecksumIEEE(f32LE(d)), First: []float64{}, Last: []float64{}}
		for i, v := range d {
			sm.Sum += float64(v)
			if i < 4 {
				sm.First = append(sm.First, float64(v))
			}
			if i >= len(d)-4 {
				sm.Last = append(sm.Last, float64(v))
			}
		}
		expect.Tensors[e.Name] = sm
	}
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not found: the independent reader check is skipped")
	}
	script, err := filepath.Abs("../../scripts/read_safetensors.py")
	if err != nil {
		t.Fatal(err)
	}
	ej, _ := json.Marshal(expect)
	ep := filepath.Join(t.TempDir(), "expect.json")
	if err := os.WriteFile(ep, ej, 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command(py, script, out, "--expect", ep).CombinedOutput(); err != nil {
		t.Fatalf("python reader: %v\n%s", err, b)
	}
	// The comparison is not a rubber stamp: other weights fail it.
	tr.Params()[0] += 1
	e := tr.Layout().Entries[0]
	sm := expect.Tensors[e.Name]
	sm.CRC32 = crc32.ChecksumIEEE(f32LE(e.Slice(tr.Params())))
	expect.Tensors[e.Name] = sm
	ej, _ = json.Marshal(expect)
	if err := os.WriteFile(ep, ej, 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command(py, script, out, "--expect", ep).CombinedOutput(); err == nil {
		t.Fatalf("python reader accepted weights that differ:\n%s", b)
	}
	// The job config travels in the metadata.
	b, err := exec.Command(py, script, out).Output()
	if err != nil {
		t.Fatal(err)
	}
	var listing struct {
		Metadata map[string]string `json:"metadata"`
	}
	if err := json.Unmarshal(b, &listing); err != nil {
		t.Fatal(err)
	}
	var cfg train.JobConfig
	if err := json.Unmarshal([]byte(listing.Metadata["moetrain.config"]), &cfg); err != nil || cfg.Model.DModel != 32 {
		t.Fatalf("moetrain.config metadata %q: %v", listing.Metadata["moetrain.config"], err)
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
