package collective

// Element-wise kernels of the reductions. Each output element depends only on
// the same element of the inputs, so results never depend on how work is
// split; and a+b == b+a bitwise in IEEE arithmetic, which is what makes the
// pairwise algorithms give identical results on both partners.

// addTo sets dst[i] = a[i] + b[i]. dst may be a or b (same start), not
// partly overlap them. The vector kernel performs the same IEEE additions.
func addTo(dst, a, b []float32) {
	n := len(dst)
	a = a[:n]
	b = b[:n]
	if n >= 16 && hasVectorAdd {
		addVector(dst, a, b)
		return
	}
	addToGeneric(dst, a, b)
}

func addToGeneric(dst, a, b []float32) {
	n := len(dst)
	a = a[:n]
	b = b[:n]
	i := 0
	for ; i+8 <= n; i += 8 {
		d := dst[i : i+8 : i+8]
		x := a[i : i+8 : i+8]
		y := b[i : i+8 : i+8]
		d[0] = x[0] + y[0]
		d[1] = x[1] + y[1]
		d[2] = x[2] + y[2]
		d[3] = x[3] + y[3]
		d[4] = x[4] + y[4]
		d[5] = x[5] + y[5]
		d[6] = x[6] + y[6]
		d[7] = x[7] + y[7]
	}
	for ; i < n; i++ {
		dst[i] = a[i] + b[i]
	}
}

// divide sets x[i] /= d. Division (not multiplication by 1/d) keeps the mean
// of integer-valued sums exact where it is representable.
func divide(x []float32, d float32) {
	for i := range x {
		x[i] /= d
	}
}
