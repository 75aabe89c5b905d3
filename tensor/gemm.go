package tensor

// Gemm computes C = op(A)·op(B) + beta·C for row-major matrices, where
// op(A) is m×k (A is m×k with row stride lda, or k×m when transA), op(B) is
// k×n (B is k×n with row stride ldb, or n×k when transB) and C is m×n with row
// stride ldc. beta == 0 overwrites C without reading it (NaNs in C are
// ignored); beta == 1 accumulates. Uses up to Threads() goroutines,
// partitioning C, so the result is bitwise identical for any thread count.
//
// This placeholder forwards to the reference until the blocked, packed
// implementation lands.
func Gemm(transA, transB bool, m, n, k int, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	GemmRef(transA, transB, m, n, k, a, lda, b, ldb, beta, c, ldc)
}
