package tensor

import "math"

// expf is a fast float32 exp (Cephes-style: x = n·ln2 + r, |r| <= ln2/2,
// degree-7 polynomial for e^r, then scale by 2^n through the exponent bits),
// accurate to about 2 ulp. It is pure arithmetic, so deterministic. Inputs
// below -87.3 (including -Inf) give 0 rather than a denormal, which softmax
// weights never miss; inputs above 88 and NaN go through math.Exp.
func expf(x float32) float32 {
	if x < -87.3 {
		return 0
	}
	if !(x <= 88) { // also catches NaN
		return float32(math.Exp(float64(x)))
	}
	const (
		log2e = 1.44269504088896341
		c1    = 0.693359375
		c2    = -2.12194440e-4
	)
	t := x * log2e
	var n int32
	if t >= 0 {
		n = int32(t + 0.5)
	} else {
		n = int32(t - 0.5)
	}
	fn := float32(n)
	r := x - fn*c1
	r -= fn * c2
	p := float32(1.9875691500e-4)
	p = p*r + 1.3981999507e-3
	p = p*r + 8.3334519073e-3
	p = p*r + 4.1665795894e-2
	p = p*r + 1.6666665459e-1
	p = p*r + 5.0000001201e-1
	p = p*r*r + r + 1
	return p * math.Float32frombits(uint32(n+127)<<23)
}

// expScaledRow sets row[c] = exp(row[c]·scl − sub) and returns the sum of
// the results. scl must be positive and the arguments at most about 88 (sub
// is at least the row's max of row[c]·scl in every caller); arguments below
// -87.3, -Inf included, give exactly 0. Each element's value depends only on
// its own input, never on its position or the row length (the vector path
// runs the tail through the same vector code), so P tiles recomputed with
// different spans agree bitwise. The sum's order is fixed by the length.
func expScaledRow(row []float32, scl, sub float32) float32 {
	if !useAVX2Rows {
		return expScaledRowGo(row, scl, sub)
	}
	n8 := len(row) &^ 7
	var sum float32
	if n8 > 0 {
		sum = expScaledRowAVX2(row[:n8], scl, sub)
	}
	if n8 < len(row) {
		ninf := float32(math.Inf(-1))
		buf := [8]float32{ninf, ninf, ninf, ninf, ninf, ninf, ninf, ninf}
		copy(buf[:], row[n8:])
		sum += expScaledRowAVX2(buf[:], scl, sub)
		copy(row[n8:], buf[:])
	}
	return sum
}

// rowMax returns the maximum of a non-empty row (NaNs are not propagated).
func rowMax(row []float32) float32 {
	mx := float32(math.Inf(-1))
	i := 0
	if useAVX2Rows && len(row) >= 8 {
		i = len(row) &^ 7
		mx = rowMaxAVX2(row[:i])
	}
	for _, z := range row[i:] {
		mx = max(mx, z)
	}
	return mx
}

// expScaledRowGo is expScaledRow in portable Go through expf; the sum runs
// in index order.
func expScaledRowGo(row []float32, scl, sub float32) float32 {
	var sum float32
	for c, z := range row {
		e := expf(z*scl - sub)
		row[c] = e
		sum += e
	}
	return sum
}
