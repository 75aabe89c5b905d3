package tokshard_test

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/moetrain/moetrain/sampling/tokshard"
)

// FuzzOpenShard replaces a shard file of a valid dataset with arbitrary
// bytes: Open either refuses it with an error or accepts it, and then every
// document reads in bounds and Verify reports any payload change; never a
// panic.
func FuzzOpenShard(f *testing.F) {
	base := f.TempDir()
	w := create(f, base, tokshard.WriterOptions{Vocab: 70000, ShardTokens: 40, ChunkBytes: 16})
	for _, d := range randDocs(rand.New(rand.NewPCG(9, 9)), 8, 70000) {
		w.WriteDoc(d[:min(len(d), 25)])
	}
	if err := w.Close(); err != nil {
		f.Fatal(err)
	}
	idx, _ := os.ReadFile(filepath.Join(base, tokshard.IndexFile))
	shard1, _ := os.ReadFile(filepath.Join(base, tokshard.ShardName(1)))
	f.Add(shard1)
	f.Add(shard1[:len(shard1)-1])
	f.Add(append(append([]byte(nil), shard1...), 0, 0, 0, 0))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		ents, _ := os.ReadDir(base)
		for _, e := range ents {
			data, _ := os.ReadFile(filepath.Join(base, e.Name()))
			os.WriteFile(filepath.Join(dir, e.Name()), data, 0o644)
		}
		os.WriteFile(filepath.Join(dir, tokshard.IndexFile), idx, 0o644)
		if err := os.WriteFile(filepath.Join(dir, tokshard.ShardName(1)), b, 0o644); err != nil {
			t.Fatal(err)
		}
		d, err := tokshard.Open(dir)
		if err != nil {
			return
		}
		defer d.Close()
		for i := 0; i < d.NumDocs(); i++ {
			tk, err := d.Doc(i)
			if err != nil || tk.Len() != d.DocLen(i) {
				t.Fatalf("document %d: %v, %d tokens, index says %d", i, err, tk.Len(), d.DocLen(i))
			}
			tk.AppendInt32(nil)
		}
		for s := 0; s < d.Index.NumShards(); s++ {
			d.Shard(s).AppendRange(nil, 0, int(d.Index.ShardTokens(s)))
		}
		if verr := d.Verify(); verr == nil && string(b[64:]) != string(shard1[64:]) {
			t.Fatal("a changed payload passed Verify")
		}
	})
}
