package ops

import "math"

// Host-side bfloat16 conversions shared by the tests of every kernel family
// with bf16 inputs or outputs; bf16 values travel as their uint16 bits.

// bf16Bits rounds x to bf16 bits, to nearest even (NaN stays NaN).
func bf16Bits(x float32) uint16 {
	b := math.Float32bits(x)
	if x != x {
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// bf16Value widens bf16 bits to float32 (exact).
func bf16Value(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// bf16Encode rounds every element of s to bf16 bits (bf16Bits).
func bf16Encode(s []float32) []uint16 { return mapSlice(s, bf16Bits) }

// bf16Decode widens bf16 bits to float32 (bf16Value).
func bf16Decode(h []uint16) []float32 { return mapSlice(h, bf16Value) }

// mapSlice returns f of every element of s, in order.
func mapSlice[S, T any](s []S, f func(S) T) []T {
	out := make([]T, len(s))
	for i, x := range s {
		out[i] = f(x)
	}
	return out
}

// bf16Round returns s rounded to bf16 and widened back (s is unchanged).
func bf16Round(s []float32) []float32 { return bf16Decode(bf16Encode(s)) }

// bf16RoundInPlace rounds x to bf16 in place (so references see what the
// bf16 kernels see) and returns the bf16 bits.
func bf16RoundInPlace(x []float32) []uint16 {
	h := bf16Encode(x)
	copy(x, bf16Decode(h))
	return h
}
