package sampling

import "fmt"

// Batch is one data-parallel rank's training batch. Row r of the batch is
// tokens [r*T, (r+1)*T).
//
// Conventions every sampler keeps (the trainer relies on them):
//   - Targets[i] is the token to predict at position i, or -1 where nothing is
//     predicted (padding, and the input part of a two-length example); the loss
//     averages over the positions with Targets >= 0 only.
//   - Pos[i] is the position index fed to the position embedding, in [0, T).
//     It counts from 0 at the start of each row, or, when Seg is set, from 0 at
//     the start of each segment.
//   - Seg is nil unless documents are packed; then Seg[i] is the segment id of
//     position i within its row (>= 0 for real tokens, -1 for padding) and
//     attention must not cross segment ids. Real tokens never sit after padding
//     in a row, so causal attention alone already keeps padding out of real
//     tokens when Seg is nil.
type Batch struct {
	B, T    int
	Tokens  []int32 // [B*T] input token ids (bytes 0..255 with the byte tokenizer)
	Targets []int32 // [B*T] next-token targets; -1 = ignored (padding)
	Pos     []int32 // [B*T] position of each token (0..T-1 normally; restarts at each document when packed)
	Seg     []int32 // [B*T] document id per token when packed (attention must not cross ids); nil otherwise
}

// Validate checks that the slices have B*T entries, token and target ids are
// in [0, vocab) (targets may be -1), positions are in [0, T) and segment ids
// are >= -1. The error names the first offending field and index.
func (b Batch) Validate(vocab int) error {
	if b.B <= 0 || b.T <= 0 {
		return fmt.Errorf("batch: B=%d T=%d, both must be positive", b.B, b.T)
	}
	n := b.B * b.T
	if len(b.Tokens) != n {
		return fmt.Errorf("batch: len(Tokens)=%d, want B*T=%d", len(b.Tokens), n)
	}
	if len(b.Targets) != n {
		return fmt.Errorf("batch: len(Targets)=%d, want B*T=%d", len(b.Targets), n)
	}
	if len(b.Pos) != n {
		return fmt.Errorf("batch: len(Pos)=%d, want B*T=%d", len(b.Pos), n)
	}
	if b.Seg != nil && len(b.Seg) != n {
		return fmt.Errorf("batch: len(Seg)=%d, want B*T=%d or nil", len(b.Seg), n)
	}
	for i := 0; i < n; i++ {
		if t := b.Tokens[i]; t < 0 || int(t) >= vocab {
			return fmt.Errorf("batch: Tokens[%d]=%d out of range [0,%d)", i, t, vocab)
		}
		if t := b.Targets[i]; t < -1 || int(t) >= vocab {
			return fmt.Errorf("batch: Targets[%d]=%d out of range [-1,%d)", i, t, vocab)
		}
		if p := b.Pos[i]; p < 0 || int(p) >= b.T {
			return fmt.Errorf("batch: Pos[%d]=%d out of range [0,%d)", i, p, b.T)
		}
		if b.Seg != nil && b.Seg[i] < -1 {
			return fmt.Errorf("batch: Seg[%d]=%d, want >= -1", i, b.Seg[i])
		}
	}
	return nil
}

// RealTokens returns the number of positions with a target (Targets >= 0).
func (b Batch) RealTokens() int {
	n := 0
	for _, t := range b.Targets {
		if t >= 0 {
			n++
		}
	}
	return n
}

// PaddingFraction is the share of the B*T positions that carry no target.
func (b Batch) PaddingFraction() float64 {
	if b.B*b.T == 0 {
		return 0
	}
	return 1 - float64(b.RealTokens())/float64(b.B*b.T)
}
