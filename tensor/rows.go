package tensor

// Elementwise and row helpers, so model code never loops over floats itself.
// Each partitions its outputs over ParallelFor; no reduction is split across
// threads, so results do not depend on the thread count.

// elemGrain is the minimum number of elements per goroutine for elementwise
// kernels: below it the goroutine handoff costs more than the work.
const elemGrain = 1 << 14

// Add sets dst = a + b elementwise over len(dst) elements.
func Add(dst, a, b []float32) {
	n := len(dst)
	a, b = a[:n], b[:n]
	ParallelFor(n, elemGrain, func(lo, hi int) {
		d, x, y := dst[lo:hi], a[lo:hi], b[lo:hi]
		for i := range d {
			d[i] = x[i] + y[i]
		}
	})
}

// AddInPlace sets dst += src elementwise over len(dst) elements.
func AddInPlace(dst, src []float32) {
	n := len(dst)
	src = src[:n]
	ParallelFor(n, elemGrain, func(lo, hi int) {
		d, s := dst[lo:hi], src[lo:hi]
		for i := range d {
			d[i] += s[i]
		}
	})
}

// Axpy sets dst += alpha·x elementwise over len(dst) elements.
func Axpy(dst []float32, alpha float32, x []float32) {
	n := len(dst)
	x = x[:n]
	ParallelFor(n, elemGrain, func(lo, hi int) {
		d, s := dst[lo:hi], x[lo:hi]
		for i := range d {
			d[i] += alpha * s[i]
		}
	})
}

// Scale sets x *= alpha elementwise.
func Scale(x []float32, alpha float32) {
	ParallelFor(len(x), elemGrain, func(lo, hi int) {
		d := x[lo:hi]
		for i := range d {
			d[i] *= alpha
		}
	})
}

// sumSqBlock is the fixed block size of SumSquares: each block is summed in
// float64 on one goroutine and the block partials are added in block order,
// so the result depends only on the data, not on the thread count.
const sumSqBlock = 4096

// SumSquares returns Σ x[i]², deterministically (fixed blocking, float64
// partials summed in order).
func SumSquares(x []float32) float64 {
	nb := (len(x) + sumSqBlock - 1) / sumSqBlock
	if nb == 0 {
		return 0
	}
	var one [1]float64
	parts := one[:]
	if nb > 1 {
		parts = make([]float64, nb)
	}
	ParallelFor(nb, 4, func(lo, hi int) {
		for bi := lo; bi < hi; bi++ {
			end := min((bi+1)*sumSqBlock, len(x))
			parts[bi] = sumSq64(x[bi*sumSqBlock : end])
		}
	})
	var sum float64
	for _, p := range parts {
		sum += p
	}
	return sum
}

// rowGrain returns a ParallelFor grain (in rows) so each goroutine gets at
// least about elemGrain elements of rows of width c.
func rowGrain(c int) int {
	if c <= 0 {
		return 1
	}
	return max(1, elemGrain/c)
}

// GatherRows sets dst[i,:] = src[idx[i],:] for i < len(idx), rows of width c.
func GatherRows(dst, src []float32, idx []int32, c int) {
	ParallelFor(len(idx), rowGrain(c), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			r := int(idx[i]) * c
			copy(dst[i*c:(i+1)*c], src[r:r+c])
		}
	})
}

// GatherRowsDotScale is the backward of a gated combine (out[idx[i],:] +=
// scale[i]·y[i,:]) in one pass over the rows, for i < len(idx), rows of
// width c: dots[i] = Σ_j src[idx[i],j]·y[i,j] (the gradient of scale[i],
// summed as RowDot does) and dst[i,:] = scale[i]·src[idx[i],:] (the gradient
// of y). Bitwise GatherRows, RowDot and a row scaling in turn.
func GatherRowsDotScale(dst, dots, src, y []float32, idx []int32, scale []float32, c int) {
	ParallelFor(len(idx), rowGrain(c), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			r := int(idx[i]) * c
			row, d := src[r:r+c], dst[i*c:(i+1)*c]
			dots[i] = dot(row, y[i*c:(i+1)*c])
			g := scale[i]
			for j, v := range row {
				d[j] = v * g
			}
		}
	})
}

// ScatterAddRows sets dst[idx[i],:] += scale[i]·src[i,:] for i < len(idx)
// (scale nil means 1), rows of width c. idx may repeat; repeated rows are
// accumulated in increasing i, whatever the thread count, because the work is
// partitioned over columns of dst.
func ScatterAddRows(dst, src []float32, idx []int32, scale []float32, c int) {
	if len(idx) == 0 || c <= 0 {
		return
	}
	// Each goroutine owns a column range and walks all rows in order.
	grain := max(16, elemGrain/len(idx))
	parallelColumns(c, grain, func(lo, hi int) {
		w := hi - lo
		for i, r := range idx {
			d := dst[int(r)*c+lo : int(r)*c+lo+w]
			s := src[i*c+lo : i*c+lo+w]
			if scale == nil {
				for j := range d {
					d[j] += s[j]
				}
			} else {
				a := scale[i]
				for j := range d {
					d[j] += a * s[j]
				}
			}
		}
	})
}

// RowDot sets out[i] = Σ_j a[i,j]·b[i,j] for n rows of width c.
func RowDot(out, a, b []float32, n, c int) {
	ParallelFor(n, rowGrain(c), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			out[i] = dot(a[i*c:(i+1)*c], b[i*c:(i+1)*c])
		}
	})
}

// dot returns Σ a[i]·b[i] over len(a) in float32 with four fixed partial
// sums (a fixed order, so the result is deterministic).
func dot(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}
