package collective

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// survivorsFail runs an all-reduce on every rank except skip and returns the
// errors of the ranks that ran.
func survivorsFail(t *testing.T, ts []Transport, skip int, size int, d time.Duration) map[int]error {
	t.Helper()
	comms := worlds(ts, Config{SegmentBytes: 4096})
	ctx := testCtx(t, d)
	errs := runRanks(comms, func(c *Comm) error {
		if c.Rank() == skip {
			return nil
		}
		buf := make([]float32, size)
		return c.AllReduce(ctx, buf, Sum)
	})
	out := make(map[int]error)
	for r, err := range errs {
		if r == skip {
			continue
		}
		if err == nil {
			t.Fatalf("rank %d: all-reduce succeeded despite the fault", r)
		}
		var oe *OpError
		if !errors.As(err, &oe) {
			t.Fatalf("rank %d: error is not an *OpError: %v", r, err)
		}
		out[r] = err
	}
	return out
}

func TestKilledPeer(t *testing.T) {
	for _, size := range []int{10, 100000} { // recursive doubling and ring
		f := NewFaults()
		ts := NewInProcess(5, WithFaults(f))
		time.AfterFunc(20*time.Millisecond, func() { f.Kill(2) })
		errs := survivorsFail(t, ts, 2, size, 5*time.Second)
		for r, err := range errs {
			if !strings.Contains(err.Error(), "rank 2") {
				t.Errorf("size %d rank %d: error does not name the dead rank 2: %v", size, r, err)
			}
			if errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("size %d rank %d: waited for the deadline instead of learning of the death: %v", size, r, err)
			}
		}
		closeAllT(ts)
	}
}

func TestCutLink(t *testing.T) {
	f := NewFaults()
	ts := NewInProcess(4, WithFaults(f))
	defer closeAllT(ts)
	// Cut as soon as the first frame crosses 0→1 (a link every all-reduce
	// algorithm uses).
	f.Drop(func(from, to int, h Header) bool {
		if from == 0 && to == 1 {
			f.Cut(0, 1)
			return true
		}
		return false
	})
	errs := survivorsFail(t, ts, -1, 200000, 5*time.Second)
	// The ends of the cut link may learn of it from the link or from the
	// other end's abort, whichever comes first; every error traces to it.
	for r, err := range errs {
		if !strings.Contains(err.Error(), "link cut") {
			t.Errorf("rank %d: error does not trace to the cut link: %v", r, err)
		}
	}
}

func TestSilentPeerHitsDeadline(t *testing.T) {
	f := NewFaults()
	ts := NewInProcess(3, WithFaults(f))
	defer closeAllT(ts)
	f.Drop(func(from, to int, h Header) bool { return (from == 0 || to == 0) && h.Op != OpAbort })
	errs := survivorsFail(t, ts, -1, 1000, 300*time.Millisecond)
	if len(errs) != 3 {
		t.Fatalf("want 3 errors, got %d", len(errs))
	}
}

func TestDesync(t *testing.T) {
	// allReduceOdd all-reduces size elements, rank odd other elements.
	allReduceOdd := func(size, odd, other int) func(c *Comm, ctx context.Context) error {
		return func(c *Comm, ctx context.Context) error {
			n := size
			if c.Rank() == odd {
				n = other
			}
			return c.AllReduce(ctx, make([]float32, n), Sum)
		}
	}
	cases := map[string]func(c *Comm, ctx context.Context) error{
		"size": allReduceOdd(12, 3, 10),
		"op": func(c *Comm, ctx context.Context) error {
			if c.Rank() == 0 {
				return c.AllGather(ctx, make([]float32, 3), make([]float32, 3*c.Size()))
			}
			return c.AllReduce(ctx, make([]float32, 12), Sum)
		},
		"ringsize": allReduceOdd(100000, 1, 100001),
		"alltoallv-counts": func(c *Comm, ctx context.Context) error {
			n := c.Size()
			sc := make([]int, n)
			rc := make([]int, n)
			for j := range n {
				sc[j], rc[j] = 2, 2
			}
			if c.Rank() == 2 {
				sc[0] = 3 // rank 0 expects 2
			}
			total := 0
			for _, k := range sc {
				total += k
			}
			return c.AllToAllV(ctx, make([]float32, total), sc, make([]float32, 2*n), rc)
		},
	}
	for name, fn := range cases {
		t.Run(name, func(t *testing.T) {
			ts := NewInProcess(4)
			defer closeAllT(ts)
			comms := worlds(ts, Config{SegmentBytes: 4096})
			ctx := testCtx(t, 5*time.Second)
			errs := runRanks(comms, func(c *Comm) error { return fn(c, ctx) })
			sawDesync := false
			for r, err := range errs {
				if err == nil {
					continue
				}
				if errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("rank %d waited for the deadline: %v", r, err)
				}
				var de *DesyncError
				if errors.As(err, &de) {
					sawDesync = true
				}
			}
			if !sawDesync {
				t.Fatalf("no rank reported a desync: %v", errs)
			}
			if name != "alltoallv-counts" {
				for r, err := range errs {
					if err == nil {
						t.Errorf("rank %d: no error", r)
					}
				}
			}
		})
	}
}

func TestDelayedLinkStillCorrect(t *testing.T) {
	f := NewFaults()
	ts := NewInProcess(3, WithFaults(f))
	defer closeAllT(ts)
	f.Delay(0, 1, 3*time.Millisecond)
	f.Delay(2, 0, time.Millisecond)
	comms := worlds(ts, Config{SegmentBytes: 1024})
	ctx := testCtx(t, 5*time.Second)
	mustAll(t, runRanks(comms, func(c *Comm) error {
		buf := make([]float32, 3001)
		for i := range buf {
			buf[i] = val(c.Rank(), i)
		}
		if err := c.AllReduce(ctx, buf, Sum); err != nil {
			return err
		}
		for i := range buf {
			if s := val(0, i) + val(1, i) + val(2, i); buf[i] != s {
				return fmt.Errorf("element %d = %v, want %v", i, buf[i], s)
			}
		}
		return nil
	}))
}

// An async operation abandoned by Wait's context is cancelled and lets go.
func TestWaitCancels(t *testing.T) {
	ts := NewInProcess(2)
	defer closeAllT(ts)
	c := NewWorld(ts[0])
	req := c.AllReduceAsync(make([]float32, 10), Sum) // rank 1 never joins
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := req.Wait(ctx); err == nil {
		t.Fatal("Wait returned nil for an operation that cannot complete")
	}
}
