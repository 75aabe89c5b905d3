package moe

import "math"

// DType is the element type rows travel in over the expert-parallel
// exchange (see docs/algorithms/ep-dispatch.md#quantized-dispatch). The
// wire buffers stay []float32 (the Exchange moves 32-bit words): narrower
// types are packed, two bfloat16 or four fp8 values to a word.
type DType uint8

const (
	// FP32 sends rows as they are.
	FP32 DType = iota
	// BF16 rounds every value to bfloat16 (round to nearest even).
	BF16
	// FP8E4M3 scales every row by 448/max|row| and rounds it to fp8 E4M3
	// (OCP "FN": no infinities, saturating at ±448); the row's scale
	// travels as one extra fp32 word.
	FP8E4M3
)

var dtypeNames = configNames[DType]{"dispatch dtype", []string{FP32: "fp32", BF16: "bf16", FP8E4M3: "fp8e4m3"}}

// ParseDType reads a config name ("" is fp32).
func ParseDType(s string) (DType, error) { return dtypeNames.parse(s) }

// String is the config name.
func (t DType) String() string { return dtypeNames.name(t) }

// Words is the number of 32-bit wire words a row of d values takes.
func (t DType) Words(d int) int {
	switch t {
	case BF16:
		return (d + 1) / 2
	case FP8E4M3:
		return 1 + (d+3)/4
	}
	return d
}

// fp8Max is E4M3's largest finite magnitude.
const fp8Max = 448

// fp8Values decodes every E4M3 bit pattern (0x7F and 0xFF are NaN).
var fp8Values = func() (t [256]float32) {
	for b := range 256 {
		e, m := (b>>3)&15, b&7
		var v float64
		switch {
		case e == 15 && m == 7:
			v = math.NaN()
		case e == 0:
			v = float64(m) / 8 * math.Ldexp(1, -6)
		default:
			v = (1 + float64(m)/8) * math.Ldexp(1, e-7)
		}
		if b&0x80 != 0 {
			v = -v
		}
		t[b] = float32(v)
	}
	return t
}()

// toFP8 rounds v to the nearest E4M3 value (ties to an even mantissa),
// saturating at ±448; NaN gives NaN (0x7F).
func toFP8(v float32) uint8 {
	b := math.Float32bits(v)
	sign := uint8(b>>24) & 0x80
	a := b &^ (1 << 31)
	switch {
	case a > 0x7F800000: // NaN
		return 0x7F
	case a >= 0x43E00000: // >= 448 (and ±Inf): saturate
		return sign | 0x7E
	case a < 0x3C800000: // below 2^-6, the smallest normal: multiples of 2^-9
		q := math.RoundToEven(float64(math.Float32frombits(a)) * 512) // exact scaling
		return sign | uint8(q)                                        // 8 is 2^-6 itself (0x08)
	}
	r := (a + 0x7FFFF + ((a >> 20) & 1)) >> 20 // 3 mantissa bits, carry into the exponent
	q := r - 120<<3                            // rebias: 127 → 7
	if q > 0x7E {
		q = 0x7E
	}
	return sign | uint8(q)
}

// toBF16 rounds v to bfloat16 (nearest even; NaN stays a quiet NaN).
func toBF16(v float32) uint16 {
	b := math.Float32bits(v)
	if b&0x7FFFFFFF > 0x7F800000 {
		return uint16(b>>16) | 0x40
	}
	return uint16((b + 0x7FFF + ((b >> 16) & 1)) >> 16)
}

// packRow writes row (d values) into w (t.Words(d) words).
func packRow(t DType, w, row []float32) {
	switch t {
	case FP32:
		copy(w, row)
	case BF16:
		d := len(row)
		for i := 0; i+1 < d; i += 2 {
			w[i/2] = math.Float32frombits(uint32(toBF16(row[i])) | uint32(toBF16(row[i+1]))<<16)
		}
		if d%2 == 1 {
			w[d/2] = math.Float32frombits(uint32(toBF16(row[d-1])))
		}
	case FP8E4M3:
		var top uint32 // largest |x| as bits: ordered like the values, NaN above Inf
		for _, v := range row {
			top = max(top, math.Float32bits(v)&^(1<<31))
		}
		words := w[1 : 1+(len(row)+3)/4]
		if top >= 0x7F800000 {
			// Not finite: the row dequantizes to NaN, which the model's
			// finiteness checks report (as they would the fp32 row).
			w[0] = float32(math.NaN())
			clear(words)
			return
		}
		amax := math.Float32frombits(top)
		w[0] = amax / fp8Max
		if amax == 0 {
			clear(words)
			return
		}
		inv := fp8Max / amax
		for i := 0; i < len(row); i += 4 {
			var u uint32
			for j, v := range row[i:min(i+4, len(row))] {
				u |= uint32(toFP8(v*inv)) << (8 * j)
			}
			words[i/4] = math.Float32frombits(u)
		}
	}
}

// unpackRow is packRow's inverse into row (d values).
func unpackRow(t DType, row, w []float32) {
	switch t {
	case FP32:
		copy(row, w[:len(row)])
	case BF16:
		for i := range row {
			h := math.Float32bits(w[i/2]) >> (16 * (i % 2)) & 0xFFFF
			row[i] = math.Float32frombits(h << 16)
		}
	case FP8E4M3:
		s := w[0]
		for i := 0; i < len(row); i += 4 {
			u := math.Float32bits(w[1+i/4])
			for j := range row[i:min(i+4, len(row))] {
				row[i+j] = fp8Values[uint8(u>>(8*j))] * s
			}
		}
	}
}
