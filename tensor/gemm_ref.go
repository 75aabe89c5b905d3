package tensor

// GemmRef is the naive reference for Gemm: a triple loop with float32
// accumulation in natural k order. Same contract as Gemm.
func GemmRef(transA, transB bool, m, n, k int, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var sum float32
			for p := 0; p < k; p++ {
				var av, bv float32
				if transA {
					av = a[p*lda+i]
				} else {
					av = a[i*lda+p]
				}
				if transB {
					bv = b[j*ldb+p]
				} else {
					bv = b[p*ldb+j]
				}
				sum += av * bv
			}
			if beta == 0 {
				c[i*ldc+j] = sum
			} else {
				c[i*ldc+j] = beta*c[i*ldc+j] + sum
			}
		}
	}
}
