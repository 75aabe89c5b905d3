package checkpoint

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moetrain/moetrain/internal/testkit"
)

// TestSafetensorsExportReadByPython exports a resharded checkpoint and checks
// it with scripts/read_safetensors.py, an independent standard-library
// reader, against checksums of the reference tensors.
func TestSafetensorsExportReadByPython(t *testing.T) {
	reader := testkit.NewSafetensorsReader(t)
	rng := rand.New(rand.NewPCG(17, 18))
	ts, layout := standardTensors(rng)
	s := newTestStore(t, 0)
	saveTest(t, s, 42, ts, layout(3), 3, WriterOptions{ChunkBytes: 64})
	c, _, err := s.Open("latest", OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	out := filepath.Join(t.TempDir(), "model.safetensors")
	names, err := ExportSafetensors(c, out, ExportOptions{Metadata: map[string]string{"run": "test"}, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(names, ",") != "a,b,empty,scalar" {
		t.Fatalf("exported %v", names)
	}
	expect := testkit.SafetensorsExpect{Tensors: map[string]testkit.TensorSummary{},
		Metadata: map[string]string{"run": "test", "step": "42", "format": "pt"}}
	for _, tt := range ts {
		if name, ok := strings.CutPrefix(tt.name, ModelPrefix); ok {
			expect.Tensors[name] = testkit.Summarize(tt.shape, tt.data)
		}
	}
	if err := reader.Check(t, out, expect); err != nil {
		t.Fatal(err)
	}
	// The reader is not a rubber stamp: a changed value fails it.
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)-1] ^= 0x40
	bad := filepath.Join(t.TempDir(), "bad.safetensors")
	if err := os.WriteFile(bad, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := reader.Check(t, bad, expect); err == nil {
		t.Fatal("python reader accepted a modified file")
	}
	if _, err := reader.Metadata(bad); err != nil {
		t.Fatalf("listing a structurally valid file failed: %v", err)
	}
	if err := os.WriteFile(bad, raw[:len(raw)-3], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := reader.Metadata(bad); err == nil {
		t.Fatal("python reader accepted a truncated file")
	}
}

// TestSafetensorsLayout checks the file structure from Go as well: header
// length, 8-byte alignment, contiguous offsets.
func TestSafetensorsLayout(t *testing.T) {
	out := filepath.Join(t.TempDir(), "x.safetensors")
	err := WriteSafetensors(out, []NamedTensor{
		{Name: "z", Shape: []int64{3}, Data: []float32{1, 2, 3}},
		{Name: "a", Shape: []int64{1, 2}, Data: []float32{4, 5}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	n := int(b[0]) | int(b[1])<<8 | int(b[2])<<16
	if n%8 != 0 || 8+n+20 != len(b) {
		t.Fatalf("header length %d, file %d bytes", n, len(b))
	}
	var h map[string]stHeaderEntry
	if err := json.Unmarshal(b[8:8+n], &h); err != nil {
		t.Fatal(err)
	}
	if h["a"].DataOffsets != [2]int64{0, 8} || h["z"].DataOffsets != [2]int64{8, 20} || h["a"].DType != "F32" {
		t.Fatalf("header %+v", h)
	}
	if err := WriteSafetensors(out, []NamedTensor{{Name: "a", Shape: []int64{2}, Data: []float32{1}}}, nil); err == nil {
		t.Fatal("accepted 1 value for shape [2]")
	}
}
