package tokenizer

import (
	"bytes"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

func split(text string) []string {
	var out []string
	splitWords([]byte(text), func(w []byte) { out = append(out, string(w)) })
	return out
}

func TestSplitWordsCases(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
	}{
		{"Hello world", []string{"Hello", " world"}},
		{"I'm can't we'll", []string{"I", "'m", " can", "'t", " we", "'ll"}},
		{"'S'RE", []string{"'", "S", "'", "RE"}},
		{"a  b", []string{"a", " ", " b"}},
		{"a   b", []string{"a", "  ", " b"}},
		{"end   ", []string{"end", "   "}},
		{"   lead", []string{"  ", " lead"}},
		{"x\n\ny", []string{"x", "\n", "\n", "y"}},
		{"x\n  y", []string{"x", "\n ", " y"}},
		{"12 345", []string{"12", " 345"}},
		{"x86_64", []string{"x", "86", "_", "64"}},
		{" ?!", []string{" ?!"}},
		{"?'s", []string{"?'", "s"}},
		{"a\tb", []string{"a", "\t", "b"}},
		{"Привет мир", []string{"Привет", " мир"}},
		{"e\u0301", []string{"e", "\u0301"}},
		{"a\u00a0b", []string{"a", "\u00a0", "b"}},
		{"\xff\xfe ab", []string{"\xff\xfe", " ab"}},
		{"", nil},
	} {
		if got := split(c.in); !slices.Equal(got, c.want) {
			t.Errorf("split(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// refSplit is a second implementation of the pattern on Go's regexp: the
// pattern without the lookahead alternative, leftmost-first, then the
// lookahead applied to a whitespace match by giving back its last
// character when a non-space follows. \s is spelled out as Oniguruma's
// Unicode whitespace.
var refPattern = regexp.MustCompile(`^(?:'s|'t|'re|'ve|'m|'ll|'d| ?\pL+| ?\pN+| ?[^\t\n\v\f\r\x{85}\p{Zs}\p{Zl}\p{Zp}\pL\pN]+|[\t\n\v\f\r\x{85}\p{Zs}\p{Zl}\p{Zp}]+)`)
var refSpace = regexp.MustCompile(`^[\t\n\v\f\r\x{85}\p{Zs}\p{Zl}\p{Zp}]+$`)

func refSplit(text []byte) [][]byte {
	var out [][]byte
	for i := 0; i < len(text); {
		m := refPattern.Find(text[i:])
		if len(m) == 0 {
			// only an invalid byte reaches here: regexp reads it as U+FFFD, "other"
			_, w := utf8.DecodeRune(text[i:])
			m = text[i : i+w]
		}
		if refSpace.Match(m) && i+len(m) < len(text) {
			if _, lw := utf8.DecodeLastRune(m); len(m) > lw {
				m = m[:len(m)-lw]
			}
		}
		out = append(out, m)
		i += len(m)
	}
	return out
}

func checkSplit(t *testing.T, text []byte) {
	t.Helper()
	var got [][]byte
	splitWords(text, func(w []byte) { got = append(got, w) })
	if !bytes.Equal(bytes.Join(got, nil), text) {
		t.Fatalf("split of %q does not concatenate back: %q", text, got)
	}
	want := refSplit(text)
	if !slices.EqualFunc(got, want, bytes.Equal) {
		t.Fatalf("split(%q):\n got  %q\n want %q", text, got, want)
	}
}

func TestSplitWordsMatchesRegexp(t *testing.T) {
	alphabet := []string{"a", "Z", "é", "ж", "語", "1", "٣", "½", " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2028", "'", "s", "t", "re", "ll", "ve", "d", "m", "!", "?", ".", "_", "👋", "\u0301", "\xff", "\xe2\x82"}
	rng := uint64(1)
	for n := 0; n < 20000; n++ {
		var sb strings.Builder
		k := int(rng>>60) + 1
		for range k {
			rng = rng*6364136223846793005 + 1442695040888963407
			sb.WriteString(alphabet[(rng>>33)%uint64(len(alphabet))])
		}
		checkSplit(t, []byte(sb.String()))
	}
}

func FuzzSplitWords(f *testing.F) {
	for _, s := range []string{"Hello world", "a   b\n\n c", "I'm 12 x\xffy", "\u3000\u3000x"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, text []byte) { checkSplit(t, text) })
}
