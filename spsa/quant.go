package spsa

import "math"

// Quantize encodes the projected gradient g as the raw value that travels
// (int8: the byte, as 0..255; fp32: the float32 bits). A non-finite g
// encodes as 0 (no step along that direction) and reports ok = false, so
// one worker's overflow cannot poison every replica.
//
// int8 rule: q = round(127·clamp(g/clip, −1, 1)), rounding half away from
// zero; −128 is never produced. clipped reports |g| > clip.
func (c Config) Quantize(g float64) (raw uint32, clipped, ok bool) {
	if math.IsNaN(g) || math.IsInf(g, 0) {
		return 0, false, false
	}
	if c.Quant == QuantFP32 {
		f := float32(g)
		if math.IsInf(float64(f), 0) { // finite float64 beyond float32's range
			return 0, false, false
		}
		return math.Float32bits(f), false, true
	}
	x := g / c.Clip
	if x > 1 {
		x, clipped = 1, true
	} else if x < -1 {
		x, clipped = -1, true
	}
	q := int8(math.Round(127 * x))
	return uint32(uint8(q)), clipped, true
}

// Dequantize is the projected gradient ĝ a raw value stands for (0 for a
// raw value the encoding cannot produce: an int8 raw > 255, −128, or a
// non-finite float32).
func (c Config) Dequantize(raw uint32) float64 {
	if c.Quant == QuantFP32 {
		f := float64(math.Float32frombits(raw))
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return 0
		}
		return f
	}
	if raw > 255 || raw == 128 {
		return 0
	}
	return float64(int8(uint8(raw))) * c.Clip / 127
}
