package tensor

// goMicro4x4 is the portable micro-kernel (4×4 tile, sixteen scalar
// accumulators kept in registers). It follows the microKernel contract; mr
// and nr must be 4.
func goMicro4x4(kc, mr, nr int, a, b, c []float32, ldc int, accumulate bool) {
	var r0, r1, r2, r3 quad
	a = a[:kc*4]
	b = b[:kc*4]
	for len(a) >= 4 && len(b) >= 4 {
		bp := quad{b[0], b[1], b[2], b[3]}
		r0 = r0.addScaled(a[0], bp)
		r1 = r1.addScaled(a[1], bp)
		r2 = r2.addScaled(a[2], bp)
		r3 = r3.addScaled(a[3], bp)
		a, b = a[4:], b[4:]
	}
	r0.store(c[0:4], accumulate)
	r1.store(c[ldc:ldc+4], accumulate)
	r2.store(c[2*ldc:2*ldc+4], accumulate)
	r3.store(c[3*ldc:3*ldc+4], accumulate)
}

// quad is one row of four accumulators of the tile: a struct of four
// scalars, which the compiler keeps in registers (an array it would not).
type quad struct{ x0, x1, x2, x3 float32 }

// addScaled is q + s·p, element-wise.
func (q quad) addScaled(s float32, p quad) quad {
	return quad{q.x0 + s*p.x0, q.x1 + s*p.x1, q.x2 + s*p.x2, q.x3 + s*p.x3}
}

// store writes q into row[:4], or adds it there when accumulate.
func (q quad) store(row []float32, accumulate bool) {
	row = row[:4:4]
	if accumulate {
		q = quad{row[0] + q.x0, row[1] + q.x1, row[2] + q.x2, row[3] + q.x3}
	}
	row[0], row[1], row[2], row[3] = q.x0, q.x1, q.x2, q.x3
}
