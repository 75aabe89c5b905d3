package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moetrain/moetrain/tokenizer"
)

// `tokenizer train` on a directory writes a loadable tokenizer.json of the
// vocabulary asked for, special token last.
func TestTokenizerTrainCommand(t *testing.T) {
	in := t.TempDir()
	for i, s := range []string{"alpha beta gamma ", "beta gamma delta ", "gamma delta alpha "} {
		if err := os.WriteFile(filepath.Join(in, string(rune('a'+i))+".txt"), []byte(strings.Repeat(s, 200)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "tok.json")
	var stdout bytes.Buffer
	rootCmd.SetOut(&stdout)
	rootCmd.SetErr(&bytes.Buffer{})
	rootCmd.SetArgs([]string{"tokenizer", "train", "--data", in, "--vocab", "270", "--special", "<eot>", "--val-fraction", "0", "--out", out})
	if err := rootCmd.Execute(); err != nil {
		t.Fatal(err)
	}
	tk, err := tokenizer.LoadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if tk.VocabSize() != 270 || !strings.Contains(stdout.String(), "vocabulary 270") {
		t.Fatalf("vocab %d; output %q", tk.VocabSize(), stdout.String())
	}
	if ids := tk.Append(nil, []byte("<eot>")); len(ids) != 1 || ids[0] != 269 {
		t.Fatalf("special token ids %v, want [269]", ids)
	}
	rootCmd.SetArgs([]string{"tokenizer", "train", "--data", in, "--vocab", "100", "--out", out})
	if err := rootCmd.Execute(); err == nil || !strings.Contains(err.Error(), "vocab size 100") {
		t.Fatalf("vocab 100: %v", err)
	}
}
