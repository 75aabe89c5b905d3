package tensor

import (
	"math"
	"testing"
)

// ce64 returns per-row losses (0 for ignored rows).
func ce64(logits []float64, targets []int32, n, v int) []float64 {
	out := make([]float64, n)
	for i := 0; i < n; i++ {
		if targets[i] < 0 {
			continue
		}
		mx := math.Inf(-1)
		for j := 0; j < v; j++ {
			mx = math.Max(mx, logits[i*v+j])
		}
		var s float64
		for j := 0; j < v; j++ {
			s += math.Exp(logits[i*v+j] - mx)
		}
		out[i] = mx + math.Log(s) - logits[i*v+int(targets[i])]
	}
	return out
}

func TestCrossEntropy(t *testing.T) { forEachRowPath(t, testCrossEntropy) }

func testCrossEntropy(t *testing.T) {
	r := newRNG(40)
	for _, n := range []int{1, 3, 13, 67} {
		for _, v := range []int{1, 2, 7, 257} {
			logits := randVec(r, n*v, 4)
			targets := make([]int32, n)
			for i := range targets {
				targets[i] = int32(r.IntN(v))
				if r.IntN(4) == 0 {
					targets[i] = -1
				}
			}
			want := ce64(to64(logits), targets, n, v)
			var wantSum float64
			wantCount := 0
			for i, l := range want {
				if targets[i] >= 0 {
					wantSum += l
					wantCount++
				}
			}
			const scale = 0.37
			losses := randVec(r, n, 1)
			dl := randVec(r, n*v, 9) // overwritten, not accumulated
			sum, count := CrossEntropy(losses, dl, logits, targets, n, v, scale)
			name := sizeName(n, v)
			checkClose(t, "losses "+name, losses, want, 1e-5, 1e-5)
			if count != wantCount || math.Abs(sum-wantSum) > 1e-4*math.Max(1, math.Abs(wantSum)) {
				t.Errorf("%s: sum, count = %v, %d; want %v, %d", name, sum, count, wantSum, wantCount)
			}
			var wantD []float64
			if n*v <= 2000 {
				wantD = numGrad(func(x []float64) float64 {
					s := 0.0
					for _, l := range ce64(x, targets, n, v) {
						s += l
					}
					return scale * s
				}, to64(logits), 1e-6)
			} else { // too big for finite differences: the analytic float64 form
				wantD = softmax64(to64(logits), n, v)
				for i, tg := range targets {
					for j := 0; j < v; j++ {
						switch {
						case tg < 0:
							wantD[i*v+j] = 0
						case j == int(tg):
							wantD[i*v+j] = scale * (wantD[i*v+j] - 1)
						default:
							wantD[i*v+j] *= scale
						}
					}
				}
			}
			checkClose(t, "dlogits "+name, dl, wantD, 1e-5, 1e-3)
			// nil dlogits: losses only.
			l2 := make([]float32, n)
			s2, c2 := CrossEntropy(l2, nil, logits, targets, n, v, scale)
			checkBitwise(t, "losses without dlogits", l2, losses)
			if s2 != sum || c2 != count {
				t.Errorf("%s: without dlogits got %v, %d; with %v, %d", name, s2, c2, sum, count)
			}
		}
	}
}

func TestCrossEntropyAllIgnored(t *testing.T) {
	logits := []float32{1, 2, 3, 4}
	dl := []float32{5, 5, 5, 5}
	losses := []float32{7, 7}
	sum, count := CrossEntropy(losses, dl, logits, []int32{-1, -100}, 2, 2, 1)
	if sum != 0 || count != 0 {
		t.Errorf("sum, count = %v, %d; want 0, 0", sum, count)
	}
	checkBitwise(t, "losses", losses, []float32{0, 0})
	checkBitwise(t, "dlogits", dl, []float32{0, 0, 0, 0})
}

func TestCrossEntropyThreadsBitwise(t *testing.T) {
	r := newRNG(41)
	n, v := 203, 259
	logits := randVec(r, n*v, 4)
	targets := make([]int32, n)
	for i := range targets {
		targets[i] = int32(r.IntN(v+1)) - 1
	}
	var l1, d1 []float32
	var s1 float64
	withThreads(t, []int{1, 2, 3}, func(th int) {
		l, d := make([]float32, n), make([]float32, n*v)
		s, _ := CrossEntropy(l, d, logits, targets, n, v, 0.5)
		if th == 1 {
			l1, d1, s1 = l, d, s
			return
		}
		checkBitwise(t, "losses", l, l1)
		checkBitwise(t, "dlogits", d, d1)
		if s != s1 {
			t.Errorf("threads %d: sum %v, threads 1: %v", th, s, s1)
		}
	})
}
