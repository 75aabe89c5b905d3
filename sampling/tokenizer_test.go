package sampling

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moetrain/moetrain/sampling/tokshard"
	"github.com/moetrain/moetrain/tokenizer"
)

// bpeFixture writes a small text corpus and a BPE tokenizer trained on it.
func bpeFixture(t *testing.T) (data, tokPath string, tk *tokenizer.BPE) {
	t.Helper()
	dir := t.TempDir()
	data = filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	var texts []string
	for i := range 40 {
		s := strings.Repeat("func main() { return err } // the value of x is "+strings.Repeat("y", i%7)+"\n", 20+i)
		texts = append(texts, s)
		if err := os.WriteFile(filepath.Join(data, "f"+string(rune('a'+i%26))+string(rune('a'+i/26))+".txt"), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tk, _, err := tokenizer.Train(func(yield func([]byte) bool) {
		for _, s := range texts {
			if !yield([]byte(s)) {
				return
			}
		}
	}, tokenizer.TrainOptions{VocabSize: 300})
	if err != nil {
		t.Fatal(err)
	}
	tokPath = filepath.Join(dir, "tok.json")
	if err := tk.WriteFile(tokPath); err != nil {
		t.Fatal(err)
	}
	return data, tokPath, tk
}

func TestOpenWithBPE(t *testing.T) {
	data, tokPath, tk := bpeFixture(t)
	cfg := DefaultConfig()
	cfg.Path, cfg.Tokenizer, cfg.SeqLen, cfg.ValFraction = data, tokPath, 16, 0.1
	d, err := Open(cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	byteCfg := cfg
	byteCfg.Tokenizer = "byte"
	db, err := Open(byteCfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	if d.Tokenizer.Fingerprint() != tk.Fingerprint() {
		t.Fatalf("Data.Tokenizer %s, want %s", d.Tokenizer.Fingerprint(), tk.Fingerprint())
	}
	// the same documents, encoded with the tokenizer, fewer tokens
	if len(d.Corpus.Train) != len(db.Corpus.Train) || TotalTokens(d.Corpus.Train) >= TotalTokens(db.Corpus.Train) {
		t.Fatalf("BPE corpus: %d docs %d tokens; byte %d docs %d tokens", len(d.Corpus.Train), TotalTokens(d.Corpus.Train), len(db.Corpus.Train), TotalTokens(db.Corpus.Train))
	}
	for i, doc := range d.Corpus.Train {
		text, err := tk.Decode(doc.Tokens)
		if err != nil || !slices.Equal(ByteTokenize(text), db.Corpus.Train[i].Tokens) {
			t.Fatalf("document %s does not decode to its text (%v)", doc.Name, err)
		}
	}
	// states carry the fingerprint; a resume under another tokenizer is refused
	s, sb := newSampler(t, d, 0, 1), newSampler(t, db, 0, 1)
	s.Next()
	st := s.State()
	if st.Tokenizer != tk.Fingerprint() {
		t.Fatalf("state tokenizer %q, want %q", st.Tokenizer, tk.Fingerprint())
	}
	if err := sb.Restore(st); err == nil || !strings.Contains(err.Error(), "tokenizer") {
		t.Fatalf("byte sampler restored a BPE state: %v", err)
	}
	if err := s.Restore(sb.State()); err == nil {
		t.Fatal("BPE sampler restored a byte state")
	}
	s2 := newSampler(t, d, 0, 1)
	if err := s2.Restore(st); err != nil {
		t.Fatalf("same tokenizer: %v", err)
	}
	b1, _ := s.Next()
	b2, _ := s2.Next()
	if !batchEqual(b1, b2) {
		t.Fatal("restored sampler gives another batch")
	}
	if st := sb.State(); st.Tokenizer != "" {
		t.Fatalf("byte state tokenizer %q, want empty", st.Tokenizer)
	}
}

func TestOpenTokenizerErrors(t *testing.T) {
	data, tokPath, _ := bpeFixture(t)
	cfg := DefaultConfig()
	cfg.Path, cfg.Tokenizer = data, filepath.Join(t.TempDir(), "missing.json")
	if _, err := Open(cfg, 1); err == nil || !strings.Contains(err.Error(), "data.tokenizer") {
		t.Fatalf("missing tokenizer: %v", err)
	}
	cfg.Tokenizer = tokPath
	cfg.Mode, cfg.InputField, cfg.OutputField = ModeBucket, "q", "a"
	if _, err := Open(cfg, 1); err == nil || !strings.Contains(err.Error(), "two-length") {
		t.Fatalf("two-length data with BPE: %v", err)
	}
}

func TestPreparedTokenizerMismatch(t *testing.T) {
	data, tokPath, _ := bpeFixture(t)
	out := filepath.Join(t.TempDir(), "prep")
	tk, err := tokshard.TokenizerByName(tokPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tokshard.Prepare(tokshard.PrepareOptions{Data: data, Out: out, Tokenizer: tk, Workers: 1}); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Path, cfg.Tokenizer, cfg.SeqLen = out, tokPath, 16
	d, err := Open(cfg, 1)
	if err != nil {
		t.Fatalf("prepared with the same tokenizer: %v", err)
	}
	d.Close()
	cfg.Tokenizer = "byte"
	if _, err := Open(cfg, 1); err == nil || !strings.Contains(err.Error(), "prepared with tokenizer bpe-") {
		t.Fatalf("prepared with BPE, opened as bytes: %v", err)
	}
	// a BPE of another vocabulary
	other := filepath.Join(t.TempDir(), "other.json")
	b, err := tokenizer.LoadFile("../tokenizer/testdata/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.WriteFile(other); err != nil {
		t.Fatal(err)
	}
	cfg.Tokenizer = other
	if _, err := Open(cfg, 1); err == nil || !strings.Contains(err.Error(), "vocabulary") {
		t.Fatalf("prepared with one BPE, opened with another: %v", err)
	}
}
