package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// splitWords calls fn with each piece of GPT-2's pre-tokenizer split of
// text, in order; the pieces concatenate to text. It implements, by hand,
// the leftmost-first alternation of the pattern
//
//	's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//
// (Go's regexp has no lookahead). \s is Oniguruma's Unicode whitespace, as
// in Hugging Face tokenizers: U+0009..U+000D, U+0085 and the categories Zs,
// Zl, Zp. A byte that is not valid UTF-8 counts as one "other" character, so
// arbitrary bytes split deterministically and still concatenate back.
func splitWords(text []byte, fn func(word []byte)) {
	for i := 0; i < len(text); {
		n := matchAt(text, i)
		fn(text[i : i+n])
		i += n
	}
}

// Character classes of the pattern.
const (
	clsLetter = iota
	clsNumber
	clsSpace
	clsOther
)

// classAt is the class and width of the character at text[i]; an invalid
// byte is clsOther of width 1.
func classAt(text []byte, i int) (cls, width int) {
	r, w := rune(text[i]), 1
	if r >= utf8.RuneSelf {
		r, w = utf8.DecodeRune(text[i:])
		if r == utf8.RuneError && w <= 1 {
			return clsOther, 1
		}
	}
	return classOf(r), w
}

func classOf(r rune) int {
	switch {
	case r < utf8.RuneSelf:
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
			return clsLetter
		case r >= '0' && r <= '9':
			return clsNumber
		case r == ' ' || (r >= 0x09 && r <= 0x0D):
			return clsSpace
		}
		return clsOther
	case unicode.IsLetter(r):
		return clsLetter
	case unicode.IsNumber(r):
		return clsNumber
	case r == 0x85 || unicode.In(r, unicode.Zs, unicode.Zl, unicode.Zp):
		return clsSpace
	}
	return clsOther
}

// runOf is the length in bytes of the run of class cls starting at i.
func runOf(text []byte, i, cls int) int {
	j := i
	for j < len(text) {
		c, w := classAt(text, j)
		if c != cls {
			break
		}
		j += w
	}
	return j - i
}

// matchAt is the length of the pattern's match at i (always >= 1).
func matchAt(text []byte, i int) int {
	if text[i] == '\'' && i+1 < len(text) {
		switch text[i+1] {
		case 's', 't', 'm', 'd':
			return 2
		case 'r', 'v', 'l':
			if i+2 < len(text) {
				next := text[i+2]
				if (text[i+1] == 'r' && next == 'e') || (text[i+1] == 'v' && next == 'e') || (text[i+1] == 'l' && next == 'l') {
					return 3
				}
			}
		}
	}
	// " ?X+" for X in letter, number, other: an optional ASCII space, then
	// a non-empty run of X.
	start := i
	if text[i] == ' ' && i+1 < len(text) {
		if c, _ := classAt(text, i+1); c != clsSpace {
			start = i + 1
		}
	}
	c, _ := classAt(text, start)
	if c != clsSpace {
		return start - i + runOf(text, start, c)
	}
	// "\s+(?!\S)": the whitespace run, less its last character when a
	// non-space follows; "\s+" when that leaves nothing.
	n := runOf(text, i, clsSpace)
	if i+n == len(text) {
		return n
	}
	_, lastW := utf8.DecodeLastRune(text[i : i+n])
	if n-lastW > 0 {
		return n - lastW
	}
	return n
}
