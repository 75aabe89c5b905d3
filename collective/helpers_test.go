package collective

import (
	"context"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"
)

// runRanks runs fn for every communicator concurrently and returns the
// per-rank errors.
func runRanks(comms []*Comm, fn func(c *Comm) error) []error {
	errs := make([]error, len(comms))
	var wg sync.WaitGroup
	for i, c := range comms {
		wg.Go(func() {
			errs[i] = fn(c)
		})
	}
	wg.Wait()
	return errs
}

func worlds(ts []Transport, cfg Config) []*Comm {
	cs := make([]*Comm, len(ts))
	for i, t := range ts {
		cs[i] = NewWorldConfig(t, cfg)
	}
	return cs
}

func mustAll(t *testing.T, errs []error) {
	t.Helper()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
}

func closeAllT(ts []Transport) {
	for _, t := range ts {
		t.Close()
	}
}

// val is an integer-valued test element: sums over up to 8 ranks stay exact.
func val(rank, i int) float32 { return float32((i*7+rank*13)%1000) - 300 }

// valSum is element i summed over ranks 0..n-1: what an all-reduce of
// val(rank, i) gives, exactly.
func valSum(n, i int) float32 {
	var s float32
	for q := range n {
		s += val(q, i)
	}
	return s
}

// checkAllReduce sums val(rank, i) over c's members with AllReduce and
// checks every element against the exact sum.
func checkAllReduce(ctx context.Context, c *Comm, size int) error {
	n := c.Size()
	buf := make([]float32, size)
	for i := range buf {
		buf[i] = val(c.Rank(), i)
	}
	if err := c.AllReduce(ctx, buf, Sum); err != nil {
		return err
	}
	for i := range buf {
		if s := valSum(n, i); buf[i] != s {
			return fmt.Errorf("allreduce n=%d size=%d: element %d = %v, want %v", n, size, i, buf[i], s)
		}
	}
	return nil
}

func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func eqBits(a, b []float32) error {
	if len(a) != len(b) {
		return fmt.Errorf("length %d, want %d", len(a), len(b))
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return fmt.Errorf("element %d = %v, want %v", i, a[i], b[i])
		}
	}
	return nil
}

var testSizes = []int{0, 1, 7, 101, 4099, 1<<18 + 3}

// cfgs exercise both all-reduce algorithms and multi-segment pipelines.
var testCfgs = map[string]Config{
	"default": {},
	"ring":    {SegmentBytes: 256, SmallBytes: 4, HalvingBytes: -1},
	"halving": {SegmentBytes: 256, SmallBytes: 4, HalvingBytes: 1 << 30},
}
