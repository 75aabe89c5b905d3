package testkit

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TensorSummary is what scripts/read_safetensors.py compares for one F32
// tensor: its shape, the CRC-32 of its little-endian bytes, the sum of its
// values and its first and last four values.
type TensorSummary struct {
	Shape []int64   `json:"shape"`
	CRC32 uint32    `json:"crc32"`
	Sum   float64   `json:"sum"`
	First []float64 `json:"first"`
	Last  []float64 `json:"last"`
}

// Summarize returns the summary of data stored with the given shape. Empty
// lists stay empty (not null) so that the reader compares them as lists.
func Summarize[I int | int64](shape []I, data []float32) TensorSummary {
	b := make([]byte, 4*len(data))
	for i, x := range data {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	s := TensorSummary{Shape: []int64{}, CRC32: crc32.ChecksumIEEE(b), First: []float64{}, Last: []float64{}}
	for _, d := range shape {
		s.Shape = append(s.Shape, int64(d))
	}
	for i, v := range data {
		s.Sum += float64(v)
		if i < 4 {
			s.First = append(s.First, float64(v))
		}
		if i >= len(data)-4 {
			s.Last = append(s.Last, float64(v))
		}
	}
	return s
}

// SafetensorsExpect is the reader's --expect document: every tensor of the
// file by name, and metadata entries the file must carry (others may too).
type SafetensorsExpect struct {
	Tensors  map[string]TensorSummary `json:"tensors"`
	Metadata map[string]string        `json:"metadata"`
}

// SafetensorsReader runs scripts/read_safetensors.py, an independent
// standard-library reader, with python3.
type SafetensorsReader struct {
	python, script string
}

// NewSafetensorsReader finds python3, skipping the test when there is none,
// and the script, in the scripts folder of the module that holds the
// working directory.
func NewSafetensorsReader(tb testing.TB) *SafetensorsReader {
	tb.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		tb.Skip("python3 not found: the independent reader check is skipped")
	}
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		up := filepath.Dir(dir)
		if up == dir {
			tb.Fatal("no go.mod above the working directory: scripts/read_safetensors.py not found")
		}
		dir = up
	}
	return &SafetensorsReader{python: py, script: filepath.Join(dir, "scripts", "read_safetensors.py")}
}

// Check runs the reader on file against want. It returns nil when the file
// is valid and matches, else an error carrying the reader's output.
func (r *SafetensorsReader) Check(tb testing.TB, file string, want SafetensorsExpect) error {
	tb.Helper()
	b, err := json.Marshal(want)
	if err != nil {
		tb.Fatal(err)
	}
	ep := filepath.Join(tb.TempDir(), "expect.json")
	if err := os.WriteFile(ep, b, 0o644); err != nil {
		tb.Fatal(err)
	}
	if out, err := exec.Command(r.python, r.script, file, "--expect", ep).CombinedOutput(); err != nil {
		return fmt.Errorf("read_safetensors.py %s: %v\n%s", file, err, out)
	}
	return nil
}

// Metadata runs the reader on file alone, which checks the whole file's
// structure, and returns the file's metadata. An invalid file gives an
// error carrying the reader's complaint.
func (r *SafetensorsReader) Metadata(file string) (map[string]string, error) {
	out, err := exec.Command(r.python, r.script, file).Output()
	if ee, ok := err.(*exec.ExitError); ok {
		return nil, fmt.Errorf("read_safetensors.py %s: %v\n%s", file, err, ee.Stderr)
	} else if err != nil {
		return nil, err
	}
	var listing struct {
		Metadata map[string]string `json:"metadata"`
	}
	if err := json.Unmarshal(out, &listing); err != nil {
		return nil, fmt.Errorf("read_safetensors.py %s: listing: %v", file, err)
	}
	return listing.Metadata, nil
}
