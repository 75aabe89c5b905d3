package moe

import (
	"math"

	"github.com/moetrain/moetrain/tensor"
)

// scoreForward writes the router scores of logits [n, e] into probs.
func scoreForward(probs, logits []float32, n, e int, s Score) {
	if s == Softmax {
		tensor.SoftmaxForward(probs, logits, n, e)
		return
	}
	tensor.ParallelFor(n*e, 4096, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			probs[i] = float32(1 / (1 + math.Exp(-float64(logits[i]))))
		}
	})
}

// scoreBackward accumulates into dlogits the gradient through the scores,
// given dprobs and the scores probs.
func scoreBackward(dlogits, dprobs, probs []float32, n, e int, s Score) {
	if s == Softmax {
		tensor.SoftmaxBackward(dlogits, dprobs, probs, n, e)
		return
	}
	tensor.ParallelFor(n*e, 4096, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			p := probs[i]
			dlogits[i] += dprobs[i] * p * (1 - p)
		}
	})
}

// ZLoss is the router z-loss of one layer (ST-MoE), mean over counted
// tokens of lse², lse = logsumexp of the token's router logits. It
// penalises large logits whatever the score function. Like Aux it has two
// stages so that parallel layouts can use global statistics: Forward sums
// this rank's tokens into Sum and Count (and sets Value from them); a caller
// may all-reduce Sum and Count and call Finish; Backward uses Count.
type ZLoss struct {
	LSE   []float64 // [N] logsumexp per token (all tokens)
	Sum   float64   // Σ lse² over counted tokens
	Count int       // counted tokens
	Value float64   // Sum / Count
}

// Forward computes lse for every token of logits [n, e] and z over the
// counted ones; mask nil counts all tokens.
func (z *ZLoss) Forward(logits []float32, n, e int, mask []bool) {
	if cap(z.LSE) < n {
		z.LSE = make([]float64, n)
	}
	z.LSE = z.LSE[:n]
	z.Count, z.Sum = 0, 0
	for t := 0; t < n; t++ {
		row := logits[t*e : (t+1)*e]
		mx := math.Inf(-1)
		for _, v := range row {
			mx = math.Max(mx, float64(v))
		}
		var sum float64
		for _, v := range row {
			sum += math.Exp(float64(v) - mx)
		}
		lse := mx + math.Log(sum)
		z.LSE[t] = lse
		if mask != nil && !mask[t] {
			continue
		}
		z.Count++
		z.Sum += lse * lse
	}
	z.Finish()
}

// Finish sets Value = Sum/Count (0 without counted tokens).
func (z *ZLoss) Finish() {
	z.Value = 0
	if z.Count > 0 {
		z.Value = z.Sum / float64(z.Count)
	}
}

// Backward accumulates coef·∂z/∂logits into dlogits [n, e]:
// coef·2·lse_t/Count·softmax(logits_t) for every counted token.
func (z *ZLoss) Backward(dlogits, logits []float32, n, e int, mask []bool, coef float64) {
	if coef == 0 || z.Count == 0 {
		return
	}
	for t := 0; t < n; t++ {
		if mask != nil && !mask[t] {
			continue
		}
		lse := z.LSE[t]
		c := coef * 2 * lse / float64(z.Count)
		row := logits[t*e : (t+1)*e]
		d := dlogits[t*e : (t+1)*e]
		for i, v := range row {
			d[i] += float32(c * math.Exp(float64(v)-lse))
		}
	}
}
