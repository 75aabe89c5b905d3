package tensor

import "math"

// CrossEntropy computes per-row softmax cross-entropy for logits [n,v] and
// targets[n]. targets[i] < 0 marks row i ignored (padding): losses[i] = 0 and,
// if dlogits != nil, dlogits[i,:] = 0. Otherwise losses[i] = −log
// softmax(logits[i,:])[targets[i]] and dlogits[i,:] (when non-nil) is
// OVERWRITTEN with scale·(softmax(logits[i,:]) − onehot(targets[i])).
// It returns the float64 sum of losses over non-ignored rows, summed in row
// order (so independent of the thread count), and the number of such rows.
// targets[i] >= v is out of range and panics like any bad index.
func CrossEntropy(losses, dlogits, logits []float32, targets []int32, n, v int, scale float32) (sum float64, count int) {
	ParallelFor(n, rowGrain(v), func(lo, hi int) {
		var tmp []float32 // exp row when dlogits is nil
		for i := lo; i < hi; i++ {
			t := int(targets[i])
			if t < 0 {
				losses[i] = 0
				if dlogits != nil {
					clear(dlogits[i*v : (i+1)*v])
				}
				continue
			}
			x := logits[i*v : (i+1)*v]
			xt := x[t]
			var e []float32
			if dlogits != nil {
				e = dlogits[i*v : (i+1)*v]
			} else {
				if tmp == nil {
					tmp = make([]float32, v)
				}
				e = tmp
			}
			mx := rowMax(x)
			copy(e, x)
			s := expScaledRow(e, 1, mx)
			losses[i] = float32(float64(mx) + math.Log(float64(s)) - float64(xt))
			if dlogits != nil {
				a := scale / s
				for j := range e {
					e[j] *= a
				}
				e[t] -= scale
			}
		}
	})
	for i := 0; i < n; i++ {
		if targets[i] >= 0 {
			sum += float64(losses[i])
			count++
		}
	}
	return sum, count
}
