package testkit

import (
	"bytes"
	"encoding/json"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// writeSafetensors writes one F32 tensor per name by hand, from the format's
// description (8-byte header length, JSON header, raw little-endian data),
// so that the reader helpers are checked without the checkpoint package.
func writeSafetensors(t *testing.T, path string, meta map[string]string, names []string, shapes [][]int, data [][]float32) {
	t.Helper()
	header := map[string]any{"__metadata__": meta}
	var raw []byte
	for i, n := range names {
		begin := len(raw)
		for _, v := range data[i] {
			u := math.Float32bits(v)
			raw = append(raw, byte(u), byte(u>>8), byte(u>>16), byte(u>>24))
		}
		header[n] = map[string]any{"dtype": "F32", "shape": shapes[i], "data_offsets": []int{begin, len(raw)}}
	}
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	for len(h)%8 != 0 {
		h = append(h, ' ')
	}
	n := uint64(len(h))
	b := []byte{byte(n), byte(n >> 8), byte(n >> 16), byte(n >> 24), byte(n >> 32), byte(n >> 40), byte(n >> 48), byte(n >> 56)}
	if err := os.WriteFile(path, append(append(b, h...), raw...), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The independent reader accepts the summaries of what the file holds,
// rejects any one field changed, and lists the metadata; empty tensors
// summarize to empty lists, not null.
func TestSafetensorsReaderChecksSummaries(t *testing.T) {
	reader := NewSafetensorsReader(t)
	long := make([]float32, 10)
	for i := range long {
		long[i] = float32(i)*0.25 - 1
	}
	names := []string{"long", "short", "empty"}
	shapes := [][]int{{2, 5}, {3}, {0}}
	data := [][]float32{long, {1.5, -2, 3}, {}}
	path := filepath.Join(t.TempDir(), "m.safetensors")
	writeSafetensors(t, path, map[string]string{"k": "v", "other": "x"}, names, shapes, data)

	want := SafetensorsExpect{Tensors: map[string]TensorSummary{}, Metadata: map[string]string{"k": "v"}}
	for i, n := range names {
		want.Tensors[n] = Summarize(shapes[i], data[i])
	}
	if s := want.Tensors["long"]; s.Sum != 1.25 || !slices.Equal(s.First, []float64{-1, -0.75, -0.5, -0.25}) ||
		!slices.Equal(s.Last, []float64{0.5, 0.75, 1, 1.25}) || !slices.Equal(s.Shape, []int64{2, 5}) {
		t.Fatalf("summary of long: %+v", s)
	}
	if b, _ := json.Marshal(want.Tensors["empty"]); !bytes.Contains(b, []byte(`"shape":[0],"crc32":0,"sum":0,"first":[],"last":[]`)) {
		t.Fatalf("empty tensor summary %s", b)
	}
	if err := reader.Check(t, path, want); err != nil {
		t.Fatal(err)
	}
	for _, change := range []func(s *TensorSummary){
		func(s *TensorSummary) { s.CRC32++ },
		func(s *TensorSummary) { s.Sum += 1 },
		func(s *TensorSummary) { s.Shape = []int64{5, 2} },
		func(s *TensorSummary) { s.Last[3] = 0 },
	} {
		bad := SafetensorsExpect{Tensors: maps.Clone(want.Tensors), Metadata: want.Metadata}
		s := Summarize(shapes[0], data[0])
		change(&s)
		bad.Tensors["long"] = s
		if err := reader.Check(t, path, bad); err == nil {
			t.Fatalf("reader accepted a changed summary %+v", s)
		}
	}
	if err := reader.Check(t, path, SafetensorsExpect{Tensors: want.Tensors, Metadata: map[string]string{"k": "w"}}); err == nil {
		t.Fatal("reader accepted wrong metadata")
	}
	if meta, err := reader.Metadata(path); err != nil || len(meta) != 2 || meta["other"] != "x" {
		t.Fatalf("metadata %v: %v", meta, err)
	}
	if err := os.WriteFile(path, []byte("short"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := reader.Metadata(path); err == nil || !bytes.Contains([]byte(err.Error()), []byte("invalid")) {
		t.Fatalf("listing a 5-byte file: %v", err)
	}
}
