package tokenizer

import (
	"slices"
	"testing"
)

// TestSafeCut checks the contract on random texts: encoding both sides of
// the cut gives the tokens of the whole.
func TestSafeCut(t *testing.T) {
	b := fixture(t)
	parts := []string{"ab", "x", "1", "23", " ", "  ", "\n", "\t", "'", "'s", "'ll", "!", "..", "жж", "👋", "<|endoftext|>", "<|end", "\xff", "é"}
	cuts := 0
	for _, text := range randomWords(5, 5000, parts) {
		p := b.SafeCut(text)
		if p == 0 {
			continue
		}
		cuts++
		if p < 0 || p >= len(text) {
			t.Fatalf("SafeCut(%q) = %d outside (0, %d)", text, p, len(text))
		}
		whole := b.Append(nil, text)
		split := b.Append(b.Append(nil, text[:p]), text[p:])
		if !slices.Equal(whole, split) {
			t.Fatalf("cut of %q at %d changes the tokens:\n whole %v\n split %v", text, p, whole, split)
		}
	}
	if cuts < 1000 {
		t.Fatalf("only %d of 5000 texts had a safe cut", cuts)
	}
	if p := b.SafeCut([]byte("          ")); p != 0 {
		t.Fatalf("SafeCut of spaces = %d, want 0", p)
	}
}
