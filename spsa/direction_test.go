package spsa

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/moetrain/moetrain/internal/testkit"
)

func randParams(n int, seed uint64) []float32 {
	rng := rand.New(rand.NewPCG(seed, 7))
	p := make([]float32, n)
	for i := range p {
		p[i] = float32(rng.NormFloat64() * 0.05)
	}
	return p
}

// Directions are balanced ±1 and independent across seeds.
func TestDirectionStatistics(t *testing.T) {
	const n = 1 << 16
	var sum, cross int
	s1, s2 := DirectionSeed(1, 0, 1, 0), DirectionSeed(1, 0, 2, 0)
	for i := range n {
		a, b := Sign(s1, i), Sign(s2, i)
		if a != 1 && a != -1 {
			t.Fatalf("Sign = %g", a)
		}
		sum += int(a)
		cross += int(a * b)
	}
	// Each sum is a ±1 walk of n steps: |sum| < 5·√n fails with probability ~1e-6.
	if lim := 5 * math.Sqrt(n); math.Abs(float64(sum)) > lim || math.Abs(float64(cross)) > lim {
		t.Fatalf("Σz = %d, Σz·z' = %d over %d elements: beyond %g", sum, cross, n, lim)
	}
	// Identifiers that differ in any field give different directions.
	seen := map[uint64]bool{}
	for step := range int64(4) {
		for w := range uint32(4) {
			for d := range uint32(4) {
				for _, job := range []uint64{1, 2} {
					s := DirectionSeed(job, step, w, d)
					if seen[s] {
						t.Fatalf("seed collision at job %d step %d worker %d dir %d", job, step, w, d)
					}
					seen[s] = true
				}
			}
		}
	}
}

// Perturb and Apply give the same bits for any thread count, and match a
// one-element-at-a-time reference.
func TestThreadsBitwiseAndReference(t *testing.T) {
	const n = 300*BlockSize*4 + 37 // several chunks, a partial last block
	src := randParams(n, 3)
	h := float32(1e-3)
	s := DirectionSeed(9, 5, 2, 1)
	ref := make([]float32, n)
	for i := range ref {
		ref[i] = src[i] + h*Sign(s, i)
	}
	for _, threads := range []int{0, 1, 2, 3, 8} {
		dst := make([]float32, n)
		Perturb(dst, src, s, h, threads)
		if i := testkit.FirstBitDiff(dst, ref); i >= 0 {
			t.Fatalf("Perturb with %d threads: element %d = %g, reference %g", threads, i, dst[i], ref[i])
		}
	}

	cfg := DefaultConfig()
	cfg.LR = 1e-3
	entries := []Entry{{1, 0, 5}, {1, 1, 200}, {2, 0, 127}, {3, 0, 0}, {7, 2, 129}}
	want := append([]float32(nil), src...)
	for i := range want {
		var acc float32
		for _, e := range entries {
			c := cfg.Coefficient(e.Raw)
			if c != 0 {
				acc += c * Sign(DirectionSeed(cfg.Seed, 11, e.Worker, e.Dir), i)
			}
		}
		want[i] += acc
	}
	for _, threads := range []int{1, 2, 3, 8} {
		p := append([]float32(nil), src...)
		if err := NewUpdater(cfg, threads).Apply(p, 11, entries); err != nil {
			t.Fatal(err)
		}
		if i := testkit.FirstBitDiff(p, want); i >= 0 {
			t.Fatalf("Apply with %d threads: element %d = %g, reference %g", threads, i, p[i], want[i])
		}
	}
	if testkit.FirstBitDiff(want, src) == -1 {
		t.Fatal("the update changed nothing")
	}
	if err := NewUpdater(cfg, 1).Apply(src, 0, []Entry{{2, 0, 1}, {1, 0, 1}}); err == nil {
		t.Fatal("unsorted entries accepted")
	}
}
