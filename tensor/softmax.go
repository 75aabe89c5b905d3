package tensor

import "math"

// SoftmaxForward sets out[i,:] = softmax(in[i,:]) for n rows of width c,
// subtracting the row maximum first so large inputs do not overflow.
func SoftmaxForward(out, in []float32, n, c int) {
	ParallelFor(n, rowGrain(c), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			softmaxRow(out[i*c:(i+1)*c], in[i*c:(i+1)*c])
		}
	})
}

// softmaxRow writes softmax(x) into o (len(o) == len(x)) and returns the
// log-sum-exp of x. An all -Inf row yields zeros and -Inf.
func softmaxRow(o, x []float32) float32 {
	x = x[:len(o)]
	mx := rowMax(x)
	if math.IsInf(float64(mx), -1) {
		clear(o)
		return mx
	}
	copy(o, x)
	sum := expScaledRow(o, 1, mx)
	inv := 1 / sum
	for j := range o {
		o[j] *= inv
	}
	return mx + float32(math.Log(float64(sum)))
}

// SoftmaxBackward accumulates din[i,:] += out[i,:]∘(dout[i,:] − Σ_j dout[i,j]·out[i,j])
// given the forward's output.
func SoftmaxBackward(din, dout, out []float32, n, c int) {
	ParallelFor(n, rowGrain(c), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			y := out[i*c : (i+1)*c]
			g := dout[i*c : (i+1)*c]
			d := din[i*c : (i+1)*c]
			s := dot(g, y)
			for j := range d {
				d[j] += y[j] * (g[j] - s)
			}
		}
	})
}
