package tokenizer

import (
	"strings"
	"unicode/utf8"
)

// MaxCutScan is how far back from the end of a text SafeCut looks.
const MaxCutScan = 64 << 10

// SafeCut returns the largest p in (len(text)-MaxCutScan, len(text)) at
// which text can be cut without changing its tokens, that is
// Append(text[:p]) + Append(text[p:]) == Append(text) for every
// continuation of text, or 0 if there is none (or the tokenizer adds a
// prefix space, which makes no cut safe). A cut is safe where the
// character before p is a letter, number or other character (not
// whitespace, not an apostrophe, which may begin a contraction) and the
// character at p is of another class: every word of the pattern that holds
// the character before p ends there whatever follows, and the split after
// p only looks forward. No added token may span p.
func (b *BPE) SafeCut(text []byte) int {
	if b.addPrefixSpace {
		return 0
	}
	lo := max(len(text)-MaxCutScan, 1)
	p := len(text) - 1
	for p >= lo {
		r, w := utf8.DecodeRune(text[p:])
		if r == utf8.RuneError && w <= 1 || !utf8.RuneStart(text[p]) {
			p--
			continue
		}
		prev, pw := utf8.DecodeLastRune(text[:p])
		if !(prev == utf8.RuneError && pw <= 1) && prev != '\'' {
			c1 := classOf(prev)
			if c1 != clsSpace && classOf(r) != c1 && !b.addedSpans(text, p) {
				return p
			}
		}
		p--
	}
	return 0
}

// addedSpans reports whether an added token's text could cover both
// text[p-1] and text[p] (an occurrence, or a prefix of one at the end).
func (b *BPE) addedSpans(text []byte, p int) bool {
	for _, a := range b.added {
		c := a.Content
		for k := 1; k < len(c); k++ { // k bytes of c before p
			if p-k < 0 {
				break
			}
			tail := text[p-k:]
			n := min(len(tail), len(c))
			if strings.HasPrefix(c, string(tail[:n])) {
				return true
			}
		}
	}
	return false
}
