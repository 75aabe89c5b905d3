// Package tokenizer turns text into token ids and back: the byte tokenizer
// (every byte its own id) and GPT-2-style byte-level BPE loaded from, or
// trained into, a Hugging Face tokenizer.json (docs/tokenizer.md).
//
// It must not import any package of the project but internal/atomicfile.
package tokenizer

import (
	"fmt"
)

// Tokenizer maps text to token ids and back. Implementations are safe for
// concurrent use.
type Tokenizer interface {
	// Append appends the ids of text to dst. Any byte string is accepted
	// (invalid UTF-8 included) and Decode(Append(nil, text)) == text.
	Append(dst []int32, text []byte) []int32
	// Decode returns the bytes the ids stand for; an id outside the
	// vocabulary is an error naming its index.
	Decode(ids []int32) ([]byte, error)
	// TokenLen is the number of bytes id decodes to (0 for an id outside
	// the vocabulary).
	TokenLen(id int32) int
	// VocabSize is one more than the largest id Append can produce: the
	// model's vocabulary (embedding rows) must be exactly this.
	VocabSize() int
	// Fingerprint identifies the mapping: two tokenizers with the same
	// fingerprint give the same ids for every text. It is "byte" for the
	// byte tokenizer and "bpe-" + 16 hex digits of a hash otherwise.
	Fingerprint() string
}

// IsByte reports whether a data.tokenizer value names the byte tokenizer.
func IsByte(name string) bool { return name == "" || name == "byte" }

// Open returns the byte tokenizer for "" or "byte" and otherwise loads the
// tokenizer.json at path.
func Open(name string) (Tokenizer, error) {
	if IsByte(name) {
		return Byte{}, nil
	}
	b, err := LoadFile(name)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// Byte is the byte tokenizer: id = byte value, vocabulary 256.
type Byte struct{}

// ByteFingerprint is the byte tokenizer's fingerprint.
const ByteFingerprint = "byte"

func (Byte) Append(dst []int32, text []byte) []int32 {
	for _, c := range text {
		dst = append(dst, int32(c))
	}
	return dst
}

func (Byte) Decode(ids []int32) ([]byte, error) {
	out := make([]byte, len(ids))
	for i, id := range ids {
		if id < 0 || id > 255 {
			return nil, fmt.Errorf("decode: ids[%d] = %d outside the byte vocabulary 0..255", i, id)
		}
		out[i] = byte(id)
	}
	return out, nil
}

func (Byte) TokenLen(id int32) int {
	if id < 0 || id > 255 {
		return 0
	}
	return 1
}

func (Byte) VocabSize() int      { return 256 }
func (Byte) Fingerprint() string { return ByteFingerprint }
