package tokenizer

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// edit returns the fixture's JSON with fn applied to its decoded form.
func edit(t *testing.T, fn func(f map[string]any)) []byte {
	t.Helper()
	data, err := os.ReadFile("testdata/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	var f map[string]any
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	fn(f)
	out, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func model(f map[string]any) map[string]any { return f["model"].(map[string]any) }

func TestParseErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		fn   func(f map[string]any)
		want string
	}{
		{"wordpiece", func(f map[string]any) { model(f)["type"] = "WordPiece" }, `model.type = "WordPiece"`},
		{"no model", func(f map[string]any) { delete(f, "model") }, "model: missing"},
		{"dropout", func(f map[string]any) { model(f)["dropout"] = 0.1 }, "model.dropout"},
		{"suffix", func(f map[string]any) { model(f)["end_of_word_suffix"] = "</w>" }, "model.end_of_word_suffix"},
		{"byte fallback", func(f map[string]any) { model(f)["byte_fallback"] = true }, "model.byte_fallback"},
		{"normalizer", func(f map[string]any) { f["normalizer"] = map[string]any{"type": "NFC"} }, "normalizer"},
		{"metaspace", func(f map[string]any) { f["pre_tokenizer"] = map[string]any{"type": "Metaspace"} }, `pre_tokenizer.type = "Metaspace"`},
		{"no pre-tokenizer", func(f map[string]any) { f["pre_tokenizer"] = nil }, "pre_tokenizer: missing"},
		{"decoder", func(f map[string]any) { f["decoder"] = map[string]any{"type": "WordPiece"} }, `decoder.type = "WordPiece"`},
		{"merge form", func(f map[string]any) { model(f)["merges"].([]any)[3] = "a b c" }, "model.merges[3]"},
		{"merge pair", func(f map[string]any) { model(f)["merges"].([]any)[4] = []any{"a"} }, "model.merges[4]"},
		{"merge unknown", func(f map[string]any) { model(f)["merges"].([]any)[5] = []any{"zzzq", "e"} }, "model.merges[5]"},
		{"merge result", func(f map[string]any) { model(f)["merges"].([]any)[6] = []any{"Q", "Q"} }, "merges[6]: result"},
		{"merge repeat", func(f map[string]any) { m := model(f)["merges"].([]any); m[7] = m[2] }, "repeats merges[2]"},
		{"missing byte", func(f map[string]any) { delete(model(f)["vocab"].(map[string]any), "Ā") }, "no token for byte 0x00"},
		{"bad vocab string", func(f map[string]any) { model(f)["vocab"].(map[string]any)["日本"] = 600.0 }, `model.vocab["日本"]`},
		{"negative id", func(f map[string]any) { model(f)["vocab"].(map[string]any)["a"] = -1.0 }, `model.vocab["a"] = -1`},
		{"huge id", func(f map[string]any) { model(f)["vocab"].(map[string]any)["a"] = float64(MaxVocab) }, `model.vocab["a"]`},
		{"lstrip", func(f map[string]any) { f["added_tokens"].([]any)[0].(map[string]any)["lstrip"] = true }, "added_tokens[0]"},
		{"empty content", func(f map[string]any) { f["added_tokens"].([]any)[0].(map[string]any)["content"] = "" }, "added_tokens[0].content"},
		{"added clash", func(f map[string]any) { f["added_tokens"].([]any)[0].(map[string]any)["id"] = 100.0 }, "id is added_tokens[0]"},
	} {
		_, err := Parse(edit(t, c.fn))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Parse error %v, want one containing %q", c.name, err, c.want)
		}
	}
	if _, err := Parse([]byte("not json")); err == nil || !strings.Contains(err.Error(), "not a tokenizer.json") {
		t.Errorf("garbage: %v", err)
	}
}

func TestLoadFileBounds(t *testing.T) {
	big := filepath.Join(t.TempDir(), "big.json")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(f.Truncate(MaxFileSize+1), f.Close()); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFile(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("oversized file: %v", err)
	}
}

func TestWriteFileAtomic(t *testing.T) {
	b := fixture(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "tok.json")
	if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteFile(p); err != nil {
		t.Fatal(err)
	}
	c, err := LoadFile(p)
	if err != nil || c.Fingerprint() != b.Fingerprint() {
		t.Fatalf("reload: %v", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("%d files left in the directory, want 1 (no temporary file)", len(ents))
	}
	if err := b.WriteFile(filepath.Join(dir, "missing", "tok.json")); err == nil {
		t.Fatal("write into a missing directory: no error")
	}
}

func FuzzParse(f *testing.F) {
	data, err := os.ReadFile("testdata/tokenizer.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add([]byte(`{"model":{"type":"BPE","vocab":{"a":0},"merges":["a a"]},"pre_tokenizer":{"type":"ByteLevel"}}`))
	f.Add([]byte(`{"model":{"type":"BPE","vocab":{"a":4194303}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := Parse(data)
		if err != nil {
			return
		}
		// whatever loads encodes and decodes without panicking
		text := []byte("Hello, world! 12 'll \xff")
		ids := b.Append(nil, text)
		if _, err := b.Decode(ids); err != nil {
			t.Fatalf("decode of own ids: %v", err)
		}
	})
}
