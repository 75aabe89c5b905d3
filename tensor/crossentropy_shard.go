package tensor

import "math"

// Vocab-parallel cross-entropy (Megatron style): each of p ranks holds the
// logits of vocabulary columns [v0, v0+v) for every row. A row's loss needs
// only three numbers per shard, so the ranks exchange 3n floats instead of
// their logits:
//
//	CrossEntropyShardStats   → stats [n, 3] of this shard
//	all-gather over the p ranks → [p, n, 3]
//	CrossEntropyShardCombine → per-row lse and loss (identical on every rank)
//	CrossEntropyShardGrad    → this shard's dlogits
//
// The result equals CrossEntropy on the concatenated logits within float32
// re-association.

// CrossEntropyShardStats writes, for row i of logits [n, v] (vocabulary
// columns [v0, v0+v)), stats[3i] = the shard's max, stats[3i+1] = Σ_j
// exp(x_j − max), stats[3i+2] = x[targets[i]−v0] when the target falls in the
// shard, else 0. Ignored rows (target < 0) get zeros.
func CrossEntropyShardStats(stats, logits []float32, targets []int32, n, v, v0 int) {
	ParallelFor(n, rowGrain(v), func(lo, hi int) {
		tmp := make([]float32, v)
		for i := lo; i < hi; i++ {
			st := stats[3*i : 3*i+3]
			t := int(targets[i])
			if t < 0 {
				st[0], st[1], st[2] = 0, 0, 0
				continue
			}
			x := logits[i*v : (i+1)*v]
			mx := rowMax(x)
			copy(tmp, x)
			st[0], st[1], st[2] = mx, expScaledRow(tmp, 1, mx), 0
			if t >= v0 && t < v0+v {
				st[2] = x[t-v0]
			}
		}
	})
}

// CrossEntropyShardCombine merges the stats of p shards, gathered as
// [p][n, 3] in shard order, into lse[i] and losses[i] = lse[i] − (target
// logit) (both 0 for ignored rows). It returns the float64 sum of the losses
// over counted rows in row order, and their count.
func CrossEntropyShardCombine(losses, lse, gathered []float32, targets []int32, n, p int) (sum float64, count int) {
	for i := 0; i < n; i++ {
		if targets[i] < 0 {
			losses[i], lse[i] = 0, 0
			continue
		}
		mx := math.Inf(-1)
		for r := 0; r < p; r++ {
			mx = math.Max(mx, float64(gathered[(r*n+i)*3]))
		}
		var s, xt float64
		for r := 0; r < p; r++ {
			g := gathered[(r*n+i)*3:]
			s += float64(g[1]) * math.Exp(float64(g[0])-mx)
			xt += float64(g[2]) // only the owning shard's is non-zero
		}
		l := mx + math.Log(s)
		lse[i] = float32(l)
		losses[i] = float32(l - xt)
		sum += float64(losses[i])
		count++
	}
	return sum, count
}

// CrossEntropyShardGrad OVERWRITES dlogits [n, v] (this shard's columns
// [v0, v0+v)) with scale·(exp(x − lse) − onehot(target)); ignored rows get 0.
func CrossEntropyShardGrad(dlogits, logits, lse []float32, targets []int32, n, v, v0 int, scale float32) {
	ParallelFor(n, rowGrain(v), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			d := dlogits[i*v : (i+1)*v]
			t := int(targets[i])
			if t < 0 {
				clear(d)
				continue
			}
			copy(d, logits[i*v:(i+1)*v])
			expScaledRow(d, 1, lse[i])
			for j := range d {
				d[j] *= scale
			}
			if t >= v0 && t < v0+v {
				d[t-v0] -= scale
			}
		}
	})
}
