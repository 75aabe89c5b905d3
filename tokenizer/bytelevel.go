package tokenizer

// GPT-2's byte-level alphabet: every byte is shown as one printable rune so
// that vocabulary entries and merges are strings without spaces or control
// characters. Bytes that are printable Latin-1 ('!'..'~', '¡'..'¬', '®'..'ÿ')
// stand for themselves; the other 68 bytes, in increasing order, take the
// runes U+0100, U+0101, ... (so ' ' is 'Ġ' and '\n' is 'Ċ').
var (
	byteRune [256]rune
	runeByte = map[rune]byte{}
)

func init() {
	n := 0
	for b := 0; b < 256; b++ {
		if printableLatin1(b) {
			byteRune[b] = rune(b)
		} else {
			byteRune[b] = rune(256 + n)
			n++
		}
		runeByte[byteRune[b]] = byte(b)
	}
}

func printableLatin1(b int) bool {
	return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
}

// toByteLevel is the byte-level string of raw bytes.
func toByteLevel(raw []byte) string {
	rs := make([]rune, len(raw))
	for i, c := range raw {
		rs[i] = byteRune[c]
	}
	return string(rs)
}

// fromByteLevel is the raw bytes of a byte-level string; ok is false when a
// rune is outside the alphabet.
func fromByteLevel(s string) (raw []byte, ok bool) {
	raw = make([]byte, 0, len(s))
	for _, r := range s {
		c, found := runeByte[r]
		if !found {
			return nil, false
		}
		raw = append(raw, c)
	}
	return raw, true
}
