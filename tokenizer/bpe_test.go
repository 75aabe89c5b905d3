package tokenizer

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func fixture(t testing.TB) *BPE {
	t.Helper()
	b, err := LoadFile("testdata/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// naiveMerge is GPT-2's merge loop: find the lowest-ranked adjacent pair,
// merge all its occurrences left to right, repeat.
func naiveMerge(b *BPE, w []byte) []int32 {
	ids := make([]int32, len(w))
	for i, c := range w {
		ids[i] = b.byteID[c]
	}
	for {
		best := int32(-1)
		var bm merge
		for i := 0; i+1 < len(ids); i++ {
			if m, ok := b.merges[pairKey(ids[i], ids[i+1])]; ok && (best < 0 || m.rank < bm.rank) {
				best, bm = m.rank, m
			}
		}
		if best < 0 {
			return ids
		}
		a, c := b.ranked[best][0], b.ranked[best][1]
		out := ids[:0:0]
		for i := 0; i < len(ids); i++ {
			if i+1 < len(ids) && ids[i] == a && ids[i+1] == c {
				out = append(out, bm.id)
				i++
				continue
			}
			out = append(out, ids[i])
		}
		ids = out
	}
}

// randomWords returns n words of 1 to 40 parts each, drawn with the
// generator seeded (seed, seed+1).
func randomWords(seed uint64, n int, parts []string) [][]byte {
	r := rand.New(rand.NewPCG(seed, seed+1))
	words := make([][]byte, n)
	for i := range words {
		var sb strings.Builder
		for range r.IntN(40) + 1 {
			sb.WriteString(parts[r.IntN(len(parts))])
		}
		words[i] = []byte(sb.String())
	}
	return words
}

func TestMergeWordMatchesNaive(t *testing.T) {
	b := fixture(t)
	parts := []string{"e", "r", "t", "in", "re", "ro", "er", "func", "Err", "s", "  ", " ", "\t", "0", "x", "\xff", "é"}
	for _, w := range randomWords(1, 5000, parts) {
		if got, want := b.mergeWord(nil, w), naiveMerge(b, w); !slices.Equal(got, want) {
			t.Fatalf("mergeWord(%q) = %v, naive %v", w, got, want)
		}
	}
	// long words (heap path with many stale entries)
	w := bytes.Repeat([]byte("return err "), 500)
	if got, want := b.mergeWord(nil, w), naiveMerge(b, w); !slices.Equal(got, want) {
		t.Fatalf("long word: mergeWord and naive differ")
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	b := fixture(t)
	r := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		text := make([]byte, r.IntN(200))
		for i := range text {
			text[i] = byte(r.Uint32())
		}
		ids := b.Append(nil, text)
		back, err := b.Decode(ids)
		if err != nil || !bytes.Equal(back, text) {
			t.Fatalf("round trip of %q: %q, %v", text, back, err)
		}
		for _, id := range ids {
			if id < 0 || int(id) >= b.VocabSize() {
				t.Fatalf("id %d outside the vocabulary %d", id, b.VocabSize())
			}
		}
	}
}

func TestAddedTokens(t *testing.T) {
	b := fixture(t)
	eot := int32(b.VocabSize() - 1)
	ids := b.Append(nil, []byte("a<|endoftext|><|endoftext|>b<|endoftext"))
	if n := strings.Count(string(mustDecode(t, b, ids)), "<|endoftext|>"); n != 2 || slices.Index(ids, eot) != 1 || ids[2] != eot {
		t.Fatalf("ids %v: want the special token twice at positions 1 and 2", ids)
	}
	if slices.Contains(b.Append(nil, []byte("<|endoftext")), eot) {
		t.Fatal("a partial special token matched")
	}
}

func mustDecode(t *testing.T, b *BPE, ids []int32) []byte {
	t.Helper()
	out, err := b.Decode(ids)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestDecodeErrors(t *testing.T) {
	b := fixture(t)
	if _, err := b.Decode([]int32{1, int32(b.VocabSize())}); err == nil || !strings.Contains(err.Error(), "ids[1]") {
		t.Fatalf("Decode of an id past the vocabulary: %v, want an error naming ids[1]", err)
	}
	if _, err := (Byte{}).Decode([]int32{-1}); err == nil {
		t.Fatal("Byte.Decode(-1): no error")
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	b := fixture(t)
	data, err := b.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if c.Fingerprint() != b.Fingerprint() || c.VocabSize() != b.VocabSize() || c.NumMerges() != b.NumMerges() {
		t.Fatalf("reparsed: %s %d %d, want %s %d %d", c.Fingerprint(), c.VocabSize(), c.NumMerges(), b.Fingerprint(), b.VocabSize(), b.NumMerges())
	}
	// the same file with merges in the older "a b" string form
	var f map[string]any
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	model := f["model"].(map[string]any)
	for i, m := range model["merges"].([]any) {
		p := m.([]any)
		model["merges"].([]any)[i] = p[0].(string) + " " + p[1].(string)
	}
	data2, _ := json.Marshal(f)
	d, err := Parse(data2)
	if err != nil {
		t.Fatal(err)
	}
	if d.Fingerprint() != b.Fingerprint() {
		t.Fatal("string-form merges give another tokenizer")
	}
	text := []byte("func (b *BPE) Append(dst []int32) error { return nil }")
	if !slices.Equal(d.Append(nil, text), b.Append(nil, text)) {
		t.Fatal("string-form merges encode differently")
	}
}

func TestFingerprint(t *testing.T) {
	b := fixture(t)
	if !strings.HasPrefix(b.Fingerprint(), "bpe-") || len(b.Fingerprint()) != 20 {
		t.Fatalf("fingerprint %q", b.Fingerprint())
	}
	other, err := newBPE(b.tokens, b.ranked[:len(b.ranked)-1], b.added, false, true, false)
	if err != nil {
		t.Fatal(err)
	}
	if other.Fingerprint() == b.Fingerprint() {
		t.Fatal("dropping a merge kept the fingerprint")
	}
	if (Byte{}).Fingerprint() != ByteFingerprint {
		t.Fatal("byte fingerprint")
	}
}

func TestOpen(t *testing.T) {
	for _, name := range []string{"", "byte"} {
		tk, err := Open(name)
		if err != nil || tk.VocabSize() != 256 {
			t.Fatalf("Open(%q) = %v, %v", name, tk, err)
		}
	}
	if _, err := Open("testdata/missing.json"); err == nil {
		t.Fatal("Open of a missing file: no error")
	}
}

func FuzzEncodeDecode(f *testing.F) {
	b := fixture(f)
	for _, s := range []string{"", "hello world", "I'm  x\n\n", "\xff\xfe<|endoftext|>", "Привет 👋"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, text []byte) {
		ids := b.Append(nil, text)
		back, err := b.Decode(ids)
		if err != nil || !bytes.Equal(back, text) {
			t.Fatalf("round trip of %q: %q, %v", text, back, err)
		}
	})
}

func BenchmarkEncode(b *testing.B) {
	tk := fixture(b)
	text := bytes.Repeat([]byte("func (s *Server) Serve(l net.Listener) error {\n\tdefer l.Close()\n\tfor {\n\t\tc, err := l.Accept()\n\t\tif err != nil {\n\t\t\treturn err\n\t\t}\n\t}\n}\n"), 200)
	b.SetBytes(int64(len(text)))
	var dst []int32
	for b.Loop() {
		dst = tk.Append(dst[:0], text)
	}
}
