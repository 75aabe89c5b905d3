package tensor

import "math"

// RMSNormForward computes out[i,:] = in[i,:]·rstd[i]·weight for n rows of
// width c, with rstd[i] = 1/sqrt(mean_j in[i,j]² + eps) saved for backward.
// The mean of squares is accumulated in float64.
func RMSNormForward(out, rstd, in, weight []float32, n, c int, eps float32) {
	weight = weight[:c]
	ParallelFor(n, rowGrain(c), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			x := in[i*c : (i+1)*c]
			o := out[i*c : (i+1)*c]
			r := float32(1 / math.Sqrt(sumSq64(x)/float64(c)+float64(eps)))
			rstd[i] = r
			for j, v := range x {
				o[j] = v * r * weight[j]
			}
		}
	})
}

// RMSNormBackward accumulates din (n×c) and dweight (c) given dout and the
// forward's in, weight and rstd:
//
//	dweight[j] += Σ_i dout[i,j]·in[i,j]·rstd[i]
//	din[i,j]   += rstd[i]·(dout[i,j]·w[j] − in[i,j]·rstd[i]²·(Σ_k dout[i,k]·w[k]·in[i,k])/c)
//
// dweight is partitioned by columns, each summing its rows in order, so it is
// bitwise identical for any thread count.
func RMSNormBackward(din, dweight, dout, in, weight, rstd []float32, n, c int) {
	weight = weight[:c]
	ParallelFor(n, rowGrain(c), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			x := in[i*c : (i+1)*c]
			g := dout[i*c : (i+1)*c]
			d := din[i*c : (i+1)*c]
			r := rstd[i]
			coef := float32(dot3_64(g, weight, x)/float64(c)) * r * r
			for j, v := range x {
				d[j] += r * (g[j]*weight[j] - v*coef)
			}
		}
	})
	if dweight == nil {
		return
	}
	dweight = dweight[:c]
	parallelColumns(c, max(16, elemGrain/max(n, 1)), func(lo, hi int) {
		acc := dweight[lo:hi]
		for i := 0; i < n; i++ {
			r := rstd[i]
			x := in[i*c+lo : i*c+hi]
			g := dout[i*c+lo : i*c+hi]
			for j := range acc {
				acc[j] += g[j] * x[j] * r
			}
		}
	})
}

// sumSq64 returns Σ x[i]² accumulated in float64 with four partial sums
// (a fixed order, so deterministic; four chains hide the add latency).
func sumSq64(x []float32) float64 {
	var s0, s1, s2, s3 float64
	i := 0
	for ; i+4 <= len(x); i += 4 {
		a, b, c, d := float64(x[i]), float64(x[i+1]), float64(x[i+2]), float64(x[i+3])
		s0 += a * a
		s1 += b * b
		s2 += c * c
		s3 += d * d
	}
	for ; i < len(x); i++ {
		a := float64(x[i])
		s0 += a * a
	}
	return (s0 + s1) + (s2 + s3)
}

// dot3_64 returns Σ a[i]·b[i]·c[i] over len(a) in float64 with four partial
// sums, like sumSq64.
func dot3_64(a, b, c []float32) float64 {
	b, c = b[:len(a)], c[:len(a)]
	var s0, s1, s2, s3 float64
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += float64(a[i]) * float64(b[i]) * float64(c[i])
		s1 += float64(a[i+1]) * float64(b[i+1]) * float64(c[i+1])
		s2 += float64(a[i+2]) * float64(b[i+2]) * float64(c[i+2])
		s3 += float64(a[i+3]) * float64(b[i+3]) * float64(c[i+3])
	}
	for ; i < len(a); i++ {
		s0 += float64(a[i]) * float64(b[i]) * float64(c[i])
	}
	return (s0 + s1) + (s2 + s3)
}
