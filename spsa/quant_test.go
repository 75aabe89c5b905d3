package spsa

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// refQuantize is the int8 rule by exhaustive search: the code q nearest to
// 127·clamp(g, −clip, clip)/clip, ties to the larger |q|.
func refQuantize(g, clip float64) int8 {
	x := math.Max(-clip, math.Min(clip, g))
	best, bestErr := 0, math.Inf(1)
	for q := -127; q <= 127; q++ {
		r := math.Abs(float64(q) - 127*(x/clip))
		if r < bestErr || (r == bestErr && abs(q) > abs(best)) {
			best, bestErr = q, r
		}
	}
	return int8(best)
}

func abs(q int) int {
	if q < 0 {
		return -q
	}
	return q
}

func TestQuantizeMatchesReference(t *testing.T) {
	c := DefaultConfig()
	rng := rand.New(rand.NewPCG(1, 2))
	var vals []float64
	for q := -130; q <= 130; q++ { // every code, its midpoints and beyond the clip
		vals = append(vals, float64(q)*c.Clip/127, (float64(q)+0.5)*c.Clip/127)
	}
	for range 20000 {
		vals = append(vals, rng.NormFloat64()*c.Clip, rng.NormFloat64()*c.Clip*1e-3)
	}
	vals = append(vals, 0, math.Copysign(0, -1), 1e300, -1e300, math.SmallestNonzeroFloat64)
	for _, g := range vals {
		raw, clipped, ok := c.Quantize(g)
		if !ok {
			t.Fatalf("Quantize(%g): not ok", g)
		}
		if raw > 255 || raw == 128 {
			t.Fatalf("Quantize(%g) = raw %d: outside the int8 codes −127..127", g, raw)
		}
		if got, want := int8(uint8(raw)), refQuantize(g, c.Clip); got != want {
			t.Fatalf("Quantize(%g) = %d, reference %d", g, got, want)
		}
		if clipped != (math.Abs(g) > c.Clip) {
			t.Fatalf("Quantize(%g): clipped = %v", g, clipped)
		}
		deq := c.Dequantize(raw)
		x := math.Max(-c.Clip, math.Min(c.Clip, g))
		if math.Abs(deq-x) > c.Clip/254*(1+1e-12) {
			t.Fatalf("Dequantize(Quantize(%g)) = %g: error beyond half a step (%g)", g, deq, c.Clip/254)
		}
	}
}

func TestQuantizeFP32AndNonFinite(t *testing.T) {
	c := DefaultConfig()
	f := c
	f.Quant = QuantFP32
	for _, g := range []float64{0, 1.5, -3.25e-7, 123456.789} {
		raw, _, ok := f.Quantize(g)
		if !ok || f.Dequantize(raw) != float64(float32(g)) {
			t.Fatalf("fp32 %g: raw %#x ok %v dequantized %g", g, raw, ok, f.Dequantize(raw))
		}
	}
	for _, cc := range []Config{c, f} {
		for _, g := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
			raw, _, ok := cc.Quantize(g)
			if ok || cc.Dequantize(raw) != 0 {
				t.Fatalf("%s %g: raw %#x ok %v, want a zero step and ok = false", cc.Quant, g, raw, ok)
			}
		}
	}
	if raw, _, ok := f.Quantize(1e300); ok || f.Dequantize(raw) != 0 {
		t.Fatalf("fp32 1e300 (beyond float32): raw %#x ok %v", raw, ok)
	}
	// Raw values no encoder produces dequantize to no step.
	for _, raw := range []uint32{128, 256, 1 << 31} {
		if c.Dequantize(raw) != 0 {
			t.Fatalf("int8 Dequantize(%d) = %g, want 0", raw, c.Dequantize(raw))
		}
	}
	if f.Dequantize(math.Float32bits(float32(math.Inf(1)))) != 0 {
		t.Fatal("fp32 Dequantize(+Inf bits) != 0")
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := []func(*Config){
		func(c *Config) { c.Epsilon = 0 },
		func(c *Config) { c.Epsilon = 1e-50 }, // rounds to float32 zero
		func(c *Config) { c.Epsilon = math.NaN() },
		func(c *Config) { c.LR = -1 },
		func(c *Config) { c.LR = math.Inf(1) },
		func(c *Config) { c.Directions = 0 },
		func(c *Config) { c.Directions = MaxDirections + 1 },
		func(c *Config) { c.Quant = "int4" },
		func(c *Config) { c.Clip = 0 },
	}
	keys := []string{"spsa.epsilon", "spsa.epsilon", "spsa.epsilon", "spsa.lr", "spsa.lr", "spsa.directions", "spsa.directions", "spsa.quant", "spsa.clip"}
	for i, f := range bad {
		c := DefaultConfig()
		f(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), keys[i]) {
			t.Errorf("case %d: err = %v, want one naming %s", i, err, keys[i])
		}
	}
	c := DefaultConfig()
	c.Quant, c.Clip = QuantFP32, 0 // clip only matters for int8
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}
