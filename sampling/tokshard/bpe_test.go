package tokshard_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moetrain/moetrain/sampling/tokshard"
	"github.com/moetrain/moetrain/tokenizer"
)

// A BPE tokenizer is chunkable only at safe cuts: a text file of several
// chunks must give the tokens of the whole file, on the serial and the
// parallel path alike, including a stretch without any safe cut.
func TestPrepareBPEChunks(t *testing.T) {
	tokPath := "../../tokenizer/testdata/tokenizer.json"
	tok, err := tokenizer.LoadFile(tokPath)
	if err != nil {
		t.Fatal(err)
	}
	in := t.TempDir()
	big := strings.Repeat("func (s *Server) Serve() error { return nil }\n\tx := 12 // don't\n", 12000) +
		strings.Repeat(" ", 300<<10) + "end" // a chunk of spaces only: no safe cut
	small := "hello world<|endoftext|>again"
	os.WriteFile(filepath.Join(in, "a.txt"), []byte(big), 0o644)
	os.WriteFile(filepath.Join(in, "b.txt"), []byte(small), 0o644)
	tk, err := tokshard.TokenizerByName(tokPath)
	if err != nil {
		t.Fatal(err)
	}
	if tk.Vocab() != tok.VocabSize() || tk.Name() != tok.Fingerprint() {
		t.Fatalf("adapter: %s %d, want %s %d", tk.Name(), tk.Vocab(), tok.Fingerprint(), tok.VocabSize())
	}
	var docs [][][]int32
	for _, workers := range []int{1, 3} {
		out := filepath.Join(t.TempDir(), "out")
		s, err := tokshard.Prepare(tokshard.PrepareOptions{Data: in, Out: out, Tokenizer: tk, Workers: workers})
		if err != nil {
			t.Fatal(err)
		}
		if s.Tokenizer != tok.Fingerprint() {
			t.Fatalf("summary tokenizer %q, want the fingerprint", s.Tokenizer)
		}
		d, err := tokshard.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		var got [][]int32
		for i := range 2 {
			r, _ := d.Doc(i)
			got = append(got, r.AppendInt32(nil))
		}
		d.Close()
		docs = append(docs, got)
	}
	if !slices.EqualFunc(docs[0], docs[1], slices.Equal) {
		t.Fatal("serial and parallel prepare differ")
	}
	// the chunk of spaces has no safe cut, so the whole-file encoding may
	// differ there; everything before it must be the whole file's tokens
	want := tok.Append(nil, []byte(big))
	head := tok.Append(nil, []byte(big[:strings.Index(big, "   ")]))
	if !slices.Equal(docs[0][0][:len(head)-1], want[:len(head)-1]) {
		t.Fatal("tokens of the first chunks differ from the whole file's")
	}
	if back, err := tok.Decode(docs[0][0]); err != nil || string(back) != big {
		t.Fatalf("prepared tokens do not decode to the file (%v)", err)
	}
	if !slices.Equal(docs[0][1], tok.Append(nil, []byte(small))) {
		t.Fatal("small file differs from its encoding")
	}
}

func TestTokenizerByNameErrors(t *testing.T) {
	if _, err := tokshard.TokenizerByName(filepath.Join(t.TempDir(), "none.json")); err == nil {
		t.Fatal("missing tokenizer: no error")
	}
}
