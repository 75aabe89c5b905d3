package testkit

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/moetrain/moetrain/sampling/tokshard"
)

func TestWriteFileCreatesFolders(t *testing.T) {
	dir := t.TempDir()
	WriteFile(t, dir, "a/b/c.txt", []byte("hi"))
	WriteFile(t, dir, "a/empty", nil)
	if b, err := os.ReadFile(filepath.Join(dir, "a", "b", "c.txt")); err != nil || string(b) != "hi" {
		t.Fatalf("a/b/c.txt: %q %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "a", "empty")); err != nil || fi.Size() != 0 {
		t.Fatalf("a/empty: %v %v", fi, err)
	}
}

// The data set reads back document by document, including an empty one
// and one that spans shards.
func TestWritePreparedReadsBack(t *testing.T) {
	docs := [][]int32{{1, 2, 3}, {}, make([]int32, 700), {299, 0}}
	for i := range docs[2] {
		docs[2][i] = int32(i % 300)
	}
	dir := filepath.Join(t.TempDir(), "ds")
	WritePrepared(t, dir, tokshard.WriterOptions{Vocab: 300, ShardTokens: 256, ChunkBytes: 64}, docs)
	ds, err := tokshard.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	var lens []int
	var all []int32
	for i := range ds.NumDocs() {
		d, err := ds.Doc(i)
		if err != nil {
			t.Fatal(err)
		}
		lens, all = append(lens, d.Len()), d.AppendInt32(all)
	}
	want := []int{3, 0, 700, 2}
	if !slices.Equal(lens, want) || !slices.Equal(all, slices.Concat(docs...)) {
		t.Fatalf("documents of %v tokens (want %v), same tokens: %v", lens, want, slices.Equal(all, slices.Concat(docs...)))
	}
}
