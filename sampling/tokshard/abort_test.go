package tokshard_test

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/moetrain/moetrain/sampling/tokshard"
)

// dirBytes returns every file of a dataset directory by name, but the
// summary (it holds paths and timings).
func dirBytes(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range ents {
		if e.Name() == tokshard.SummaryFile {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	return out
}

func sameDirs(t *testing.T, what, a, b string) {
	t.Helper()
	x, y := dirBytes(t, a), dirBytes(t, b)
	if len(x) != len(y) {
		t.Fatalf("%s: %d files vs %d", what, len(x), len(y))
	}
	for name, bx := range x {
		if by, ok := y[name]; !ok || !bytes.Equal(bx, by) {
			t.Fatalf("%s: %s differs (%d vs %d bytes)", what, name, len(bx), len(by))
		}
	}
}

// Property: documents written in pieces (Write or WriteEncoded) with some of
// them aborted part-way give the same bytes as writing only the kept
// documents whole; aborts cross chunk and shard boundaries.
func TestAbortDocAndEncoded(t *testing.T) {
	for seed := uint64(0); seed < 20; seed++ {
		r := rand.New(rand.NewPCG(seed, 7))
		vocab := []int{256, 1 << 16, 70000}[seed%3]
		o := tokshard.WriterOptions{Vocab: vocab, ShardTokens: int64(200 + r.IntN(3000)), ChunkBytes: 4 * (1 + r.IntN(200))}
		docs := randDocs(r, 120, vocab)
		keep := make([]bool, len(docs))
		got, want := t.TempDir(), t.TempDir()
		w, ref := create(t, got, o), create(t, want, o)
		var enc tokshard.Encoded
		var err error
		for i, d := range docs {
			keep[i] = r.IntN(3) > 0 && (i < len(docs)-1 || seed%2 == 0) // odd seeds end with an abort
			if err := w.BeginDoc(); err != nil {
				t.Fatal(err)
			}
			for rest := d; len(rest) > 0; {
				n := min(len(rest), 1+r.IntN(100))
				if r.IntN(2) == 0 {
					err = w.Write(rest[:n])
				} else {
					if enc, err = tokshard.AppendEncoded(enc.Reset(), vocab, rest[:n]); err != nil {
						t.Fatal(err)
					}
					if enc.Tokens() != n {
						t.Fatalf("encoded %d tokens, want %d", enc.Tokens(), n)
					}
					err = w.WriteEncoded(enc)
				}
				if err != nil {
					t.Fatal(err)
				}
				rest = rest[n:]
			}
			if keep[i] {
				err = w.EndDoc()
				if err == nil {
					err = ref.WriteDoc(d)
				}
			} else {
				err = w.AbortDoc()
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if err := ref.Close(); err != nil {
			t.Fatal(err)
		}
		sameDirs(t, "aborted vs kept-only", got, want)
		ds, err := tokshard.Open(got)
		if err != nil {
			t.Fatal(err)
		}
		if err := ds.Verify(); err != nil {
			t.Fatal(err)
		}
		ds.Close()
	}
}

func TestEncodedChecks(t *testing.T) {
	if _, err := tokshard.AppendEncoded(tokshard.Encoded{}, 256, []int32{3, 256}); err == nil {
		t.Error("token 256 of vocabulary 256 accepted")
	}
	e, err := tokshard.AppendEncoded(tokshard.Encoded{}, 256, []int32{1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tokshard.AppendEncoded(e, 512, []int32{1}); err == nil {
		t.Error("mixing vocabularies accepted")
	}
	w := create(t, t.TempDir(), tokshard.WriterOptions{Vocab: 300})
	defer w.Abort()
	if err := w.BeginDoc(); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteEncoded(e); err == nil {
		t.Error("tokens encoded for vocabulary 256 written to a 300 writer")
	}
	if err := w.AbortDoc(); err == nil {
		t.Error("AbortDoc after a failed write succeeded")
	}
}
