package tensor

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// threadBudget is the number of goroutines a kernel may use at once. Several
// worker processes share one machine in local runs, so this is settable per
// process rather than always GOMAXPROCS.
var threadBudget atomic.Int32

func init() { threadBudget.Store(int32(runtime.GOMAXPROCS(0))) }

// SetThreads sets the per-process kernel thread budget. n < 1 restores the
// default (GOMAXPROCS). Safe to call concurrently with running kernels; a
// kernel reads the budget once when it starts.
func SetThreads(n int) {
	if n < 1 {
		n = runtime.GOMAXPROCS(0)
	}
	threadBudget.Store(int32(n))
}

// Threads reports the current kernel thread budget (at least 1).
func Threads() int {
	n := int(threadBudget.Load())
	if n < 1 {
		return 1
	}
	return n
}

// ParallelFor splits [0, n) into at most Threads() contiguous chunks of at
// least grain items and calls fn(lo, hi) on each, concurrently, returning when
// all are done. fn must write only outputs owned by its range, so the result
// does not depend on the number of chunks. With one chunk fn runs on the
// calling goroutine.
func ParallelFor(n, grain int, fn func(lo, hi int)) { ParallelForThreads(n, grain, Threads(), fn) }

// ParallelForThreads is ParallelFor over at most threads goroutines
// instead of the process budget (callers that fix their own thread count,
// e.g. for results that must not depend on the budget's split).
func ParallelForThreads(n, grain, threads int, fn func(lo, hi int)) {
	if n <= 0 {
		return
	}
	if grain < 1 {
		grain = 1
	}
	// Floor, not ceiling: n/chunks must stay ≥ grain for every chunk.
	chunks := min(max(threads, 1), max(n/grain, 1))
	if chunks <= 1 {
		fn(0, n)
		return
	}
	var wg sync.WaitGroup
	wg.Add(chunks - 1)
	for c := 1; c < chunks; c++ {
		lo, hi := c*n/chunks, (c+1)*n/chunks
		go func() {
			defer wg.Done()
			fn(lo, hi)
		}()
	}
	fn(0, n/chunks)
	wg.Wait()
}
