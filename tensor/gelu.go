package tensor

import "math"

// GELU here is the exact form x·Φ(x), Φ the standard normal CDF, not the
// tanh approximation. The kernels evaluate Φ in float32 through
// Φ(x) = erfc(−x/√2)/2 with the Chebyshev-fitted erfc of Numerical Recipes
// (erfcc: relative error < 1.2e-7 for every argument) and expf, about 10×
// cheaper than float64 math.Erf and as accurate as a float32 result can be
// to ~1e-6 relative (the error grows like x² ulp only where Φ underflows
// towards 0). On amd64 with AVX2+FMA the same formulas run 8 lanes at a
// time (rows_amd64.s). GELUForwardRef / GELUBackwardRef use math.Erf.

// geluCDF returns Φ(x).
func geluCDF(x float32) float32 {
	z := float32(math.Abs(float64(x))) * (1 / math.Sqrt2)
	t := 1 / (1 + 0.5*z)
	p := t*(t*(t*(t*(t*(t*(t*(t*(t*0.17087277-0.82215223)+1.48851587)-1.13520398)+0.27886807)-0.18628806)+0.09678418)+0.37409196)+1.00002368) - 1.26551223
	half := 0.5 * t * expf(p-z*z) // erfc(z)/2
	if x >= 0 {
		return 1 - half
	}
	return half
}

// GELUForward sets out = x·Φ(x) elementwise over len(out).
func GELUForward(out, in []float32) {
	n := len(out)
	in = in[:n]
	ParallelFor(n, elemGrain/4, func(lo, hi int) { geluForwardSpan(out[lo:hi], in[lo:hi]) })
}

// GELUForwardSerial is GELUForward on the calling goroutine only, for
// callers that already split their work over the thread budget; the
// results are the same.
func GELUForwardSerial(out, in []float32) { geluForwardSpan(out, in[:len(out)]) }

func geluForwardSpan(o, x []float32) {
	if useAVX2Rows {
		n8 := len(o) &^ 7
		geluForwardAVX2(o[:n8], x[:n8])
		if n8 < len(o) { // the tail through the same vector code
			var bo, bx [8]float32
			copy(bx[:], x[n8:])
			geluForwardAVX2(bo[:], bx[:])
			copy(o[n8:], bo[:])
		}
		return
	}
	for i, v := range x {
		o[i] = v * geluCDF(v)
	}
}

// GELUBackward accumulates din += dout·(Φ(x) + x·φ(x)) elementwise over
// len(din), φ the standard normal density.
func GELUBackward(din, dout, in []float32) {
	n := len(din)
	dout, in = dout[:n], in[:n]
	ParallelFor(n, elemGrain/4, func(lo, hi int) { geluBackwardSpan(din[lo:hi], dout[lo:hi], in[lo:hi]) })
}

// GELUBackwardSerial is GELUBackward on the calling goroutine only (see
// GELUForwardSerial).
func GELUBackwardSerial(din, dout, in []float32) {
	n := len(din)
	geluBackwardSpan(din, dout[:n], in[:n])
}

func geluBackwardSpan(d, g, x []float32) {
	const invSqrt2Pi = 0.3989422804014327 // 1/√(2π)
	if useAVX2Rows {
		n8 := len(d) &^ 7
		geluBackwardAVX2(d[:n8], g[:n8], x[:n8])
		if n8 < len(d) { // the tail through the same vector code
			var bd, bg, bx [8]float32
			copy(bd[:], d[n8:])
			copy(bg[:], g[n8:])
			copy(bx[:], x[n8:])
			geluBackwardAVX2(bd[:], bg[:], bx[:])
			copy(d[n8:], bd[:])
		}
		return
	}
	for i, v := range x {
		pdf := invSqrt2Pi * expf(-0.5*v*v)
		d[i] += g[i] * (geluCDF(v) + v*pdf)
	}
}

// GELUForwardRef is the reference for GELUForward: float64 math.Erf, one
// goroutine.
func GELUForwardRef(out, in []float32) {
	for i := range out {
		x := float64(in[i])
		out[i] = float32(0.5 * x * (1 + math.Erf(x/math.Sqrt2)))
	}
}

// GELUBackwardRef is the reference for GELUBackward: float64 math.Erf and
// math.Exp, one goroutine.
func GELUBackwardRef(din, dout, in []float32) {
	const invSqrt2Pi = 0.3989422804014327
	for i := range din {
		x := float64(in[i])
		cdf := 0.5 * (1 + math.Erf(x/math.Sqrt2))
		pdf := invSqrt2Pi * math.Exp(-0.5*x*x)
		din[i] += dout[i] * float32(cdf+x*pdf)
	}
}
