package model

import "github.com/moetrain/moetrain/tensor"

// parGrain is the smallest chunk worth a goroutine for memory-bound copies.
const parGrain = 1 << 15

// zero clears x using the kernel thread budget (large activation gradients
// would otherwise be cleared on one core).
func zero(x []float32) {
	tensor.ParallelFor(len(x), parGrain, func(lo, hi int) { clear(x[lo:hi]) })
}

// copyPar is copy(dst, src) over len(src) elements using the thread budget.
func copyPar(dst, src []float32) {
	dst = dst[:len(src)]
	tensor.ParallelFor(len(src), parGrain, func(lo, hi int) { copy(dst[lo:hi], src[lo:hi]) })
}
