package optim

import (
	"math"

	"github.com/moetrain/moetrain/tensor"
)

// GlobalNorm is the L2 norm of grads, summed deterministically (fixed
// blocking), so it is identical for any thread count. Sharded callers sum
// SumSquares over their ranges and all-reduce before the square root.
func GlobalNorm(grads []float32) float64 { return math.Sqrt(tensor.SumSquares(grads)) }

// ClipScale is the factor that brings a gradient of L2 norm `norm` down to
// maxNorm (1 when maxNorm is 0 or the norm is already within it).
func ClipScale(norm, maxNorm float64) float64 {
	if maxNorm <= 0 || !(norm > maxNorm) {
		return 1
	}
	return maxNorm / (norm + 1e-6)
}
