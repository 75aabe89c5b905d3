package tensor

import (
	"math"
	"math/rand/v2"
	"testing"
)

// The vocab-parallel pieces over p shards equal CrossEntropy on the whole
// logits, for shard counts that split v unevenly too (the kernels do not
// assume equal shards).
func TestCrossEntropyShardedEqualsWhole(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, c := range []struct{ n, v, p int }{{1, 7, 1}, {5, 12, 2}, {9, 33, 3}, {17, 256, 4}, {4, 10, 5}} {
		logits := make([]float32, c.n*c.v)
		for i := range logits {
			logits[i] = float32(rng.NormFloat64() * 3)
		}
		targets := make([]int32, c.n)
		for i := range targets {
			targets[i] = int32(rng.IntN(c.v))
			if i%4 == 3 {
				targets[i] = -1
			}
		}
		scale := float32(0.37)
		wantL := make([]float32, c.n)
		wantD := make([]float32, c.n*c.v)
		wantSum, wantCount := CrossEntropy(wantL, wantD, logits, targets, c.n, c.v, scale)

		bounds := make([]int, c.p+1)
		for r := 0; r <= c.p; r++ {
			bounds[r] = r * c.v / c.p
		}
		gathered := make([]float32, c.p*c.n*3)
		shard := func(r int) []float32 {
			w := bounds[r+1] - bounds[r]
			s := make([]float32, c.n*w)
			for i := 0; i < c.n; i++ {
				copy(s[i*w:(i+1)*w], logits[i*c.v+bounds[r]:i*c.v+bounds[r+1]])
			}
			return s
		}
		for r := 0; r < c.p; r++ {
			CrossEntropyShardStats(gathered[r*c.n*3:(r+1)*c.n*3], shard(r), targets, c.n, bounds[r+1]-bounds[r], bounds[r])
		}
		losses, lse := make([]float32, c.n), make([]float32, c.n)
		sum, count := CrossEntropyShardCombine(losses, lse, gathered, targets, c.n, c.p)
		if count != wantCount || math.Abs(sum-wantSum) > 1e-5*math.Abs(wantSum)+1e-6 {
			t.Fatalf("%+v: sum %v count %d, want %v %d", c, sum, count, wantSum, wantCount)
		}
		for i := range losses {
			if math.Abs(float64(losses[i]-wantL[i])) > 1e-5*(1+math.Abs(float64(wantL[i]))) {
				t.Fatalf("%+v: loss[%d] = %v, want %v", c, i, losses[i], wantL[i])
			}
		}
		for r := 0; r < c.p; r++ {
			w := bounds[r+1] - bounds[r]
			d := make([]float32, c.n*w)
			CrossEntropyShardGrad(d, shard(r), lse, targets, c.n, w, bounds[r], scale)
			for i := 0; i < c.n; i++ {
				for j := 0; j < w; j++ {
					got, want := d[i*w+j], wantD[i*c.v+bounds[r]+j]
					if math.Abs(float64(got-want)) > 1e-6+1e-5*math.Abs(float64(want)) {
						t.Fatalf("%+v: dlogits[%d, %d] = %v, want %v", c, i, bounds[r]+j, got, want)
					}
				}
			}
		}
	}
}
