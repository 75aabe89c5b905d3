package sampling

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadCorpusSources(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "one.txt"), strings.Repeat("hello world ", 50))
	writeFile(t, filepath.Join(dir, "tree", "b.txt"), "bee")
	writeFile(t, filepath.Join(dir, "tree", "a", "x.txt"), "ex")
	writeFile(t, filepath.Join(dir, "tree", ".hidden"), "secret")
	writeFile(t, filepath.Join(dir, "tree", "c.jsonl"), "{\"text\":\"one\"}\n\n{\"text\":\"two\",\"n\":1}\n")

	c, err := LoadCorpus(filepath.Join(dir, "one.txt"), 0.1, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Train) != 1 || len(c.Val) != 1 || TotalTokens(c.Train)+TotalTokens(c.Val) != 600 {
		t.Fatalf("single file split: %d train %d val docs", len(c.Train), len(c.Val))
	}
	docs, err := ReadDocuments(filepath.Join(dir, "tree"), "text")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range docs {
		names = append(names, filepath.Base(d.Name)+"="+string(ByteDetokenize(d.Tokens)))
	}
	want := "x.txt=ex b.txt=bee c.jsonl:1=one c.jsonl:3=two"
	if got := strings.Join(names, " "); got != want {
		t.Fatalf("directory documents %q, want %q", got, want)
	}
	c, err = LoadCorpus("embedded", 0.3, 1)
	if err != nil || c.Name != "embedded:gostd" {
		t.Fatalf("embedded: %v", err)
	}
}

func TestLoadCorpusSplitManyDocs(t *testing.T) {
	dir := t.TempDir()
	var b strings.Builder
	for i := 0; i < 400; i++ {
		b.WriteString("{\"text\":\"document text here\"}\n")
	}
	writeFile(t, filepath.Join(dir, "d.jsonl"), b.String())
	c, err := LoadCorpus(filepath.Join(dir, "d.jsonl"), 0.1, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Val) < 20 || len(c.Val) > 65 || len(c.Train)+len(c.Val) != 400 {
		t.Fatalf("document split %d/%d", len(c.Train), len(c.Val))
	}
	c2, _ := LoadCorpus(filepath.Join(dir, "d.jsonl"), 0.1, 3)
	if len(c2.Val) != len(c.Val) || c2.Val[0].Name != c.Val[0].Name {
		t.Fatal("split not deterministic")
	}
}

func TestLoadCorpusErrors(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "empty.txt"), "")
	writeFile(t, filepath.Join(dir, "bad.jsonl"), "{\"text\":\"ok\"}\n{\"text\": \n")
	writeFile(t, filepath.Join(dir, "nofield.jsonl"), "{\"text\":\"ok\"}\n\n{\"body\":\"x\"}\n")
	writeFile(t, filepath.Join(dir, "notstring.jsonl"), "{\"text\":3}\n")
	writeFile(t, filepath.Join(dir, "array.jsonl"), "[1,2]\n")
	writeFile(t, filepath.Join(dir, "blank.jsonl"), "\n  \n")
	writeFile(t, filepath.Join(dir, "tiny.txt"), "ab")
	if err := os.MkdirAll(filepath.Join(dir, "emptydir"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ file, want string }{
		{"missing.txt", "missing.txt"},
		{"empty.txt", "empty.txt: file is empty"},
		{"bad.jsonl", "bad.jsonl:2: not a JSON object"},
		{"nofield.jsonl", "nofield.jsonl:3: missing field \"text\""},
		{"notstring.jsonl", "notstring.jsonl:1: field \"text\" is not a string"},
		{"array.jsonl", "array.jsonl:1: not a JSON object"},
		{"blank.jsonl", "blank.jsonl: no JSON records"},
		{"emptydir", "holds no documents"},
		{"tiny.txt", "too short"},
	} {
		_, err := LoadCorpus(filepath.Join(dir, tc.file), 0.05, 1)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to contain %q", tc.file, err, tc.want)
		}
	}
	if _, err := LoadCorpus(filepath.Join(dir, "tiny.txt"), 1.5, 1); err == nil {
		t.Error("validation fraction 1.5 accepted")
	}
}

// FuzzReadJSONL: the reader never panics; on success every document is a
// string "text" field of a parsed line; on failure the error names the input
// and a line number.
func FuzzReadJSONL(f *testing.F) {
	f.Add([]byte("{\"text\":\"a\"}\n{\"text\":\"b\\n\"}"))
	f.Add([]byte("{\"text\":\n"))
	f.Add([]byte("\n\n{\"x\":1}"))
	f.Add([]byte("null\n"))
	f.Add([]byte("{\"text\":\"\\u00e9\"}\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		docs, err := ReadJSONL(bytes.NewReader(data), "fz.jsonl", "text")
		if err != nil {
			if !strings.Contains(err.Error(), "fz.jsonl") {
				t.Fatalf("error does not name the file: %v", err)
			}
			if docs != nil {
				t.Fatal("documents returned with an error")
			}
			return
		}
		if len(docs) == 0 {
			t.Fatal("no documents and no error")
		}
		for _, d := range docs {
			if len(d.Tokens) == 0 || !strings.HasPrefix(d.Name, "fz.jsonl:") {
				t.Fatalf("bad document %+v", d)
			}
			if !bytes.Contains(data, []byte("text")) {
				t.Fatal("document without a text field in the input")
			}
		}
	})
}
