package atomicfile

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tempPath returns a new temporary directory and the path of name in it.
func tempPath(t *testing.T, name string) (dir, path string) {
	dir = t.TempDir()
	return dir, filepath.Join(dir, name)
}

func TestWriteReplacesWhole(t *testing.T) {
	dir, p := tempPath(t, "state.json")
	for _, data := range [][]byte{[]byte("first version, longer than the second"), []byte("second")} {
		if err := Write(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read %q, %v; want %q", got, err, data)
		}
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v; want 0600", fi.Mode(), err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("%d entries left in the directory, want only the file", len(ents))
	}
}

// A failed write leaves the old file and no temporary file.
func TestWriteFailureKeepsOld(t *testing.T) {
	dir, p := tempPath(t, "f")
	if err := Write(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Renaming a file over a directory fails after the data is written.
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sub, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err := Write(sub, []byte("new"), 0o644)
	if err == nil || !strings.Contains(err.Error(), sub) {
		t.Fatalf("write over a non-empty directory: %v, want an error naming it", err)
	}
	if got, _ := os.ReadFile(p); string(got) != "old" {
		t.Fatalf("old file now %q", got)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Fatalf("%d entries in the directory, want the file and sub only", len(ents))
	}
	if err := Write(filepath.Join(dir, "missing", "f"), nil, 0o644); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
}

// failingSource writes part of its content, then fails.
type failingSource struct{}

func (failingSource) WriteTo(w io.Writer) (int64, error) {
	n, _ := w.Write([]byte("partial"))
	return int64(n), errors.New("source failed")
}

// WriteTo writes what the source writes; a source that fails midway leaves
// the old file, no temporary file, and an error naming the path and cause.
func TestWriteToSourceFailureKeepsOld(t *testing.T) {
	dir, p := tempPath(t, "plot.png")
	if err := WriteTo(p, bytes.NewReader([]byte("old image")), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(p); err != nil || string(got) != "old image" {
		t.Fatalf("read %q, %v", got, err)
	}
	err := WriteTo(p, failingSource{}, 0o644)
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "source failed") {
		t.Fatalf("failing source: %v", err)
	}
	if got, _ := os.ReadFile(p); string(got) != "old image" {
		t.Fatalf("old file now %q", got)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("%d entries left in the directory, want only the file", len(ents))
	}
}
