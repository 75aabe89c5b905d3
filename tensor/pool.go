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

// ParallelFor splits [0, n) into contiguous chunks of at least grain items
// and calls fn(lo, hi) on each, on at most Threads() goroutines at once,
// returning when all are done. fn must write only outputs owned by its
// range, so the result does not depend on the number of chunks. With one
// chunk fn runs on the calling goroutine.
//
// There are up to chunksPerThread chunks per goroutine, taken in turn from
// a shared counter, the calling goroutine first: a goroutine that starts
// late (waking an idle core costs tens of microseconds on a virtualised
// host) or is descheduled by another process just takes fewer chunks,
// where one fixed half each would leave the other core waiting for it.
func ParallelFor(n, grain int, fn func(lo, hi int)) { ParallelForThreads(n, grain, Threads(), fn) }

// chunksPerThread is how many chunks ParallelFor makes per goroutine.
const chunksPerThread = 4

// ParallelForThreads is ParallelFor over at most threads goroutines
// instead of the process budget (callers that fix their own thread count,
// e.g. for results that must not depend on the budget's split).
func ParallelForThreads(n, grain, threads int, fn func(lo, hi int)) {
	parallelFor(n, grain, threads, chunksPerThread, fn)
}

// parallelFor is ParallelForThreads with perThread chunks per goroutine
// (callers whose chunks cost extra setup each use fewer).
func parallelFor(n, grain, threads, perThread int, fn func(lo, hi int)) {
	if n <= 0 {
		return
	}
	if grain < 1 {
		grain = 1
	}
	// Floor, not ceiling: n/chunks must stay ≥ grain for every chunk.
	workers := min(max(threads, 1), max(n/grain, 1))
	if workers <= 1 {
		fn(0, n)
		return
	}
	chunks := min(workers*max(perThread, 1), n/grain)
	var next atomic.Int64
	work := func() {
		for {
			c := int(next.Add(1)) - 1
			if c >= chunks {
				return
			}
			fn(c*n/chunks, (c+1)*n/chunks)
		}
	}
	var wg sync.WaitGroup
	wg.Add(workers - 1)
	for range workers - 1 {
		go func() {
			defer wg.Done()
			work()
		}()
	}
	work()
	wg.Wait()
}

// parallelColumns is ParallelFor for column partitions whose every chunk
// walks all rows of a matrix: one chunk per goroutine, since each further
// chunk is one more pass over the rows, and none narrower than
// minParallelColumns: a narrow strip of every row reads a few cache lines
// per row, often last written by the other core, and measured slower on two
// threads than on one (e.g. [4096, 256]).
func parallelColumns(c, grain int, fn func(lo, hi int)) {
	th := Threads()
	parallelFor(c, max(grain, minParallelColumns, (c+th-1)/th), th, 1, fn)
}

// minParallelColumns is the narrowest column strip parallelColumns gives a
// goroutine.
const minParallelColumns = 256
