package optim

import (
	"fmt"
	"math"

	"github.com/moetrain/moetrain/tensor"
)

// AdamW holds the two moment buffers over a range [Lo, Hi) of a flat
// parameter buffer (the full buffer in serial training, one shard with
// ZeRO-1). The moments are indexed relative to Lo.
type AdamW struct {
	Beta1, Beta2, Eps, WeightDecay float64
	Lo, Hi                         int
	M, V                           []float32 // first and second moments, len Hi-Lo

	partial []float64 // per-block sums of squares, reused
}

// NewAdamW allocates zeroed moments for the range [lo, hi).
func NewAdamW(cfg Config, lo, hi int) (*AdamW, error) {
	if lo < 0 || hi < lo {
		return nil, fmt.Errorf("optim: bad range [%d, %d)", lo, hi)
	}
	return &AdamW{
		Beta1: cfg.Beta1, Beta2: cfg.Beta2, Eps: cfg.Eps, WeightDecay: cfg.WeightDecay,
		Lo: lo, Hi: hi, M: make([]float32, hi-lo), V: make([]float32, hi-lo),
	}, nil
}

// normBlock is the fixed block of the fused sum of squares: each block is
// summed in float64 by one goroutine and the partials are added in block
// order, so the result does not depend on the thread count.
const normBlock = 4096

// Update applies one AdamW step numbered t (1-based, for bias correction)
// with learning rate lr to params[Lo:Hi] using grads[Lo:Hi]·gradScale
// (gradScale carries clipping). Matches torch.optim.AdamW:
//
//	p -= lr·wd·p;  m = β1·m + (1-β1)·g;  v = β2·v + (1-β2)·g²
//	p -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + eps)
//
// Elementwise, partitioned over fixed blocks, so deterministic for any thread
// count. It returns Σ g² over the range (before gradScale), summed in fixed
// blocks, so callers that do not clip get the gradient norm in the same pass.
func (o *AdamW) Update(params, grads []float32, t int, lr, gradScale float64) (sumSq float64, err error) {
	if o.Hi > len(params) || o.Hi > len(grads) {
		return 0, fmt.Errorf("optim: range [%d, %d) beyond buffers of %d params, %d grads", o.Lo, o.Hi, len(params), len(grads))
	}
	if t < 1 {
		return 0, fmt.Errorf("optim: step number %d, want >= 1", t)
	}
	bc1 := 1 - math.Pow(o.Beta1, float64(t))
	bc2 := 1 - math.Pow(o.Beta2, float64(t))
	b1, b2 := float32(o.Beta1), float32(o.Beta2)
	ob1, ob2 := float32(1-o.Beta1), float32(1-o.Beta2)
	decay := float32(1 - lr*o.WeightDecay)
	stepSize := float32(lr / bc1)
	invSqrtBc2 := float32(1 / math.Sqrt(bc2))
	eps := float32(o.Eps)
	gs := float32(gradScale)
	p := params[o.Lo:o.Hi]
	g := grads[o.Lo:o.Hi]
	m, v := o.M, o.V
	nb := (len(p) + normBlock - 1) / normBlock
	if cap(o.partial) < nb {
		o.partial = make([]float64, nb)
	}
	partial := o.partial[:nb]
	tensor.ParallelFor(nb, 4, func(blo, bhi int) {
		for blk := blo; blk < bhi; blk++ {
			lo, hi := blk*normBlock, min((blk+1)*normBlock, len(p))
			pp, gg, mm, vv := p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
			var ss float64
			for i := range pp {
				g0 := gg[i]
				ss += float64(g0) * float64(g0)
				gi := g0 * gs
				mi := b1*mm[i] + ob1*gi
				vi := b2*vv[i] + ob2*gi*gi
				mm[i], vv[i] = mi, vi
				denom := float32(math.Sqrt(float64(vi)))*invSqrtBc2 + eps
				pp[i] = pp[i]*decay - stepSize*mi/denom
			}
			partial[blk] = ss
		}
	})
	for _, x := range partial {
		sumSq += x
	}
	return sumSq, nil
}
