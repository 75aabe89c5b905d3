package checkpoint

import (
	"encoding/json"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSafetensorsExportReadByPython exports a resharded checkpoint and checks
// it with scripts/read_safetensors.py, an independent standard-library
// reader, against checksums of the reference tensors.
func TestSafetensorsExportReadByPython(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not found")
	}
	script, err := filepath.Abs("../scripts/read_safetensors.py")
	if err != nil {
		t.Fatal(err)
	}
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
	type summary struct {
		Shape []int64   `json:"shape"`
		CRC32 uint32    `json:"crc32"`
		Sum   float64   `json:"sum"`
		First []float64 `json:"first"`
		Last  []float64 `json:"last"`
	}
	expect := struct {
		Tensors  map[string]summary `json:"tensors"`
		Metadata map[string]string  `json:"metadata"`
	}{Tensors: map[string]summary{}, Metadata: map[string]string{"run": "test", "step": "42", "format": "pt"}}
	for _, tt := range ts {
		name, ok := strings.CutPrefix(tt.name, ModelPrefix)
		if !ok {
			continue
		}
		sm := summary{Shape: tt.shape, CRC32: crc32.ChecksumIEEE(f32Bytes(tt.data)), First: []float64{}, Last: []float64{}}
		if sm.Shape == nil {
			sm.Shape = []int64{}
		}
		for i, v := range tt.data {
			sm.Sum += float64(v)
			if i < 4 {
				sm.First = append(sm.First, float64(v))
			}
			if i >= len(tt.data)-4 {
				sm.Last = append(sm.Last, float64(v))
			}
		}
		expect.Tensors[name] = sm
	}
	ej, _ := json.Marshal(expect)
	ep := filepath.Join(t.TempDir(), "expect.json")
	if err := os.WriteFile(ep, ej, 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command(py, script, out, "--expect", ep).CombinedOutput(); err != nil {
		t.Fatalf("python reader: %v\n%s", err, b)
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
	if b, err := exec.Command(py, script, bad, "--expect", ep).CombinedOutput(); err == nil {
		t.Fatalf("python reader accepted a modified file:\n%s", b)
	}
	if b, err := exec.Command(py, script, bad).CombinedOutput(); err != nil {
		t.Fatalf("listing a structurally valid file failed: %v\n%s", err, b)
	}
	if err := os.WriteFile(bad, raw[:len(raw)-3], 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command(py, script, bad).CombinedOutput(); err == nil {
		t.Fatalf("python reader accepted a truncated file:\n%s", b)
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
