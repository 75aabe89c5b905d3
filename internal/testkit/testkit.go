// Package testkit holds the fixtures that tests of several packages share:
// input trees on disk, prepared (tokshard) data sets, the independent
// safetensors reader's expectations, and ranks run on in-process
// transports. Each helper fails the test on any error it does not return.
// Test code only: nothing else may import it.
package testkit

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/moetrain/moetrain/sampling/tokshard"
)

// WriteFile writes data to dir/name (a slash-separated relative path),
// creating the folders on the way.
func WriteFile(tb testing.TB, dir, name string, data []byte) {
	tb.Helper()
	p := filepath.Join(dir, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		tb.Fatal(err)
	}
}

// WritePrepared writes docs, in order, as the prepared data set in dir.
func WritePrepared(tb testing.TB, dir string, opts tokshard.WriterOptions, docs [][]int32) {
	tb.Helper()
	w, err := tokshard.Create(dir, opts)
	if err != nil {
		tb.Fatal(err)
	}
	for _, d := range docs {
		if err := w.WriteDoc(d); err != nil {
			w.Abort()
			tb.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
}
