package tensor

import (
	"runtime"
	"sync"
	"testing"
)

func TestSetThreads(t *testing.T) {
	defer SetThreads(0)
	SetThreads(3)
	if got := Threads(); got != 3 {
		t.Fatalf("Threads() = %d after SetThreads(3)", got)
	}
	SetThreads(-1)
	if got, want := Threads(), runtime.GOMAXPROCS(0); got != want {
		t.Fatalf("Threads() = %d after SetThreads(-1), want GOMAXPROCS %d", got, want)
	}
}

func TestParallelForCoversRangeOnce(t *testing.T) {
	defer SetThreads(0)
	for _, threads := range []int{1, 2, 3, 5} {
		for _, n := range []int{0, 1, 2, 7, 64, 1001} {
			for _, grain := range []int{0, 1, 3, 100, 5000} {
				SetThreads(threads)
				var mu sync.Mutex
				hits := make([]int, n)
				calls, active, maxActive := 0, 0, 0
				ParallelFor(n, grain, func(lo, hi int) {
					if lo >= hi || lo < 0 || hi > n {
						t.Errorf("threads=%d n=%d grain=%d: bad chunk [%d,%d)", threads, n, grain, lo, hi)
						return
					}
					mu.Lock()
					calls++
					active++
					maxActive = max(maxActive, active)
					for i := lo; i < hi; i++ {
						hits[i]++
					}
					mu.Unlock()
					runtime.Gosched() // let other goroutines overlap this call
					mu.Lock()
					active--
					mu.Unlock()
				})
				for i, h := range hits {
					if h != 1 {
						t.Fatalf("threads=%d n=%d grain=%d: index %d visited %d times", threads, n, grain, i, h)
					}
				}
				g := max(grain, 1)
				maxChunks := max(1, min(threads*chunksPerThread, n/g))
				if n > 0 && (calls < 1 || calls > maxChunks) {
					t.Fatalf("threads=%d n=%d grain=%d: %d chunks, want 1..%d", threads, n, grain, calls, maxChunks)
				}
				if maxActive > threads {
					t.Fatalf("threads=%d n=%d grain=%d: %d calls at once", threads, n, grain, maxActive)
				}
				// Chunks other than a lone one respect the grain.
				if calls > 1 && n/calls < g {
					t.Fatalf("threads=%d n=%d grain=%d: %d chunks smaller than the grain", threads, n, grain, calls)
				}
			}
		}
	}
}
