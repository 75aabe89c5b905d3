package tokenizer

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
)

// TestFixture checks the Go encoder against ids produced by an independent
// implementation (testdata/PROVENANCE.md).
func TestFixture(t *testing.T) {
	tk, err := LoadFile("testdata/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	var texts []string
	readJSON(t, "testdata/texts.json", &texts)
	var want struct {
		Implementation string    `json:"implementation"`
		IDs            [][]int32 `json:"ids"`
	}
	readJSON(t, "testdata/expected.json", &want)
	if len(want.IDs) != len(texts) {
		t.Fatalf("expected.json has %d encodings for %d texts", len(want.IDs), len(texts))
	}
	if want.Implementation == "" || strings.Contains(want.Implementation, "moetrain") {
		t.Fatalf("expected.json implementation %q: want an independent one", want.Implementation)
	}
	for i, text := range texts {
		got := tk.Append(nil, []byte(text))
		if !slices.Equal(got, want.IDs[i]) && !(len(got) == 0 && len(want.IDs[i]) == 0) {
			t.Errorf("text %d %q:\n got  %v\n want %v", i, text, got, want.IDs[i])
		}
		back, err := tk.Decode(got)
		if err != nil || string(back) != text {
			t.Errorf("text %d: Decode = %q, %v; want the text", i, back, err)
		}
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
