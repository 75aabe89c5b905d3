package cuda

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/moetrain/moetrain/internal/gputest"
)

// ncclRank is one rank of an in-process NCCL group: its context, stream
// and communicator.
type ncclRank struct {
	ctx  *Context
	comm *NCCLComm
}

// ncclGroup opens one rank per GPU (at most want; GPU 0 uses the shared
// test context) and joins them into one communicator, each rank from its
// own goroutine as separate processes would.
func ncclGroup(t *testing.T, want int) []ncclRank {
	t.Helper()
	c0, _ := gpu(t)
	if _, _, err := NCCLVersion(); err != nil {
		gputest.SkipOrFail(t, err)
	}
	n, err := DeviceCount()
	if err != nil {
		t.Fatal(err)
	}
	n = min(n, want)
	ranks := make([]ncclRank, n)
	ranks[0].ctx = c0
	for r := 1; r < n; r++ {
		if ranks[r].ctx, err = Open(r); err != nil {
			t.Fatal(err)
		}
	}
	id, err := NewNCCLUniqueID()
	if err != nil {
		t.Fatal(err)
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range ranks {
		wg.Go(func() { ranks[r].comm, errs[r] = NewNCCLComm(ranks[r].ctx, id, r, n) })
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	t.Cleanup(func() {
		for r, x := range ranks {
			if err := x.comm.Close(); err != nil {
				t.Errorf("rank %d close: %v", r, err)
			}
			if r > 0 {
				x.ctx.Close()
			}
		}
	})
	return ranks
}

// onRanks runs fn(rank) on every rank concurrently (NCCL collectives need
// every rank to enqueue its part) and fails on the first error.
func onRanks(t *testing.T, ranks []ncclRank, fn func(r int, x ncclRank) error) {
	t.Helper()
	errs := make([]error, len(ranks))
	var wg sync.WaitGroup
	for r, x := range ranks {
		wg.Go(func() { errs[r] = fn(r, x) })
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
}

// integerValues are small whole numbers, whose float32 sums are exact in
// any order: the results must equal the host reference bit for bit.
func integerValues(rng *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.IntN(2001) - 1000)
	}
	return v
}

func TestNCCLVersion(t *testing.T) {
	gpu(t)
	v, path, err := NCCLVersion()
	if err != nil {
		gputest.SkipOrFail(t, err)
	}
	t.Logf("NCCL %d.%d.%d (%s), %d GPU(s)", v/10000, v/100%100, v%100, path, must(DeviceCount()))
	if v < 20000 {
		t.Fatalf("NCCL version code %d: implausible", v)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// Every collective on every GPU the machine has (up to 4; one GPU still
// checks the bindings: argument order, types, streams, groups), against a
// host reference, on random sizes.
func TestNCCLCollectivesAgainstReference(t *testing.T) {
	ranks := ncclGroup(t, 4)
	n := len(ranks)
	rng := rand.New(rand.NewPCG(7, uint64(n)))
	for trial := range 4 {
		count := 1 + rng.IntN(1<<16)
		inputs := make([][]float32, n)
		for r := range inputs {
			inputs[r] = integerValues(rng, n*count)
		}
		sum := make([]float32, n*count)
		for r := range inputs {
			for i, v := range inputs[r] {
				sum[i] += v
			}
		}
		t.Run(fmt.Sprintf("trial%d_count%d", trial, count), func(t *testing.T) {
			onRanks(t, ranks, func(r int, x ncclRank) error {
				c := x.ctx
				bytes := n * count * 4
				send, err := c.Alloc(bytes)
				if err != nil {
					return err
				}
				defer c.Free(send)
				recv, err := c.Alloc(bytes)
				if err != nil {
					return err
				}
				defer c.Free(recv)
				got := make([]float32, n*count)
				check := func(what string, want []float32) error {
					if err := c.SyncStream(c.Stream()); err != nil {
						return err
					}
					if err := CopyOut(c, got[:len(want)], recv); err != nil {
						return err
					}
					for i := range want {
						if got[i] != want[i] {
							return fmt.Errorf("%s: element %d = %v, want %v", what, i, got[i], want[i])
						}
					}
					return nil
				}
				if err := CopyIn(c, send, inputs[r]); err != nil {
					return err
				}
				if err := x.comm.AllReduce(c.Stream(), send, recv, n*count, NCCLFloat32, NCCLSum); err != nil {
					return err
				}
				if err := check("all-reduce", sum); err != nil {
					return err
				}
				if err := x.comm.ReduceScatter(c.Stream(), send, recv, count, NCCLFloat32, NCCLSum); err != nil {
					return err
				}
				if err := check("reduce-scatter", sum[r*count:(r+1)*count]); err != nil {
					return err
				}
				if err := x.comm.AllGather(c.Stream(), send, recv, count, NCCLFloat32); err != nil {
					return err
				}
				var gathered []float32
				for p := range n {
					gathered = append(gathered, inputs[p][:count]...)
				}
				return check("all-gather", gathered)
			})
		})
	}
}

// The expert-parallel exchange: uneven counts (zeros included) between
// every pair, each rank's receive buffer laid out by source rank.
func TestNCCLAllToAllV(t *testing.T) {
	ranks := ncclGroup(t, 4)
	n := len(ranks)
	rng := rand.New(rand.NewPCG(11, uint64(n)))
	counts := make([][]int, n) // counts[src][dst]
	for s := range counts {
		counts[s] = make([]int, n)
		for d := range counts[s] {
			if rng.IntN(4) > 0 {
				counts[s][d] = rng.IntN(5000)
			}
		}
	}
	inputs := make([][]float32, n)
	for s := range inputs {
		total := 0
		for _, c := range counts[s] {
			total += c
		}
		inputs[s] = integerValues(rng, total)
	}
	offsets := func(c []int) []int {
		o := make([]int, len(c))
		for i := 1; i < len(c); i++ {
			o[i] = o[i-1] + c[i-1]
		}
		return o
	}
	onRanks(t, ranks, func(r int, x ncclRank) error {
		c := x.ctx
		recvCounts := make([]int, n)
		var want []float32
		for s := range n {
			recvCounts[s] = counts[s][r]
			o := offsets(counts[s])[r]
			want = append(want, inputs[s][o:o+counts[s][r]]...)
		}
		send, err := c.Alloc(max(len(inputs[r]), 1) * 4)
		if err != nil {
			return err
		}
		defer c.Free(send)
		recv, err := c.Alloc(max(len(want), 1) * 4)
		if err != nil {
			return err
		}
		defer c.Free(recv)
		if len(inputs[r]) > 0 {
			if err := CopyIn(c, send, inputs[r]); err != nil {
				return err
			}
		}
		if err := x.comm.AllToAllV(c.Stream(), send, counts[r], offsets(counts[r]), recv, recvCounts, offsets(recvCounts), NCCLFloat32); err != nil {
			return err
		}
		if err := c.SyncStream(c.Stream()); err != nil {
			return err
		}
		got := make([]float32, len(want))
		if len(want) > 0 {
			if err := CopyOut(c, got, recv); err != nil {
				return err
			}
		}
		for i := range want {
			if got[i] != want[i] {
				return fmt.Errorf("element %d = %v, want %v", i, got[i], want[i])
			}
		}
		return x.comm.AsyncError()
	})
}

// Bad arguments are errors naming the call, not crashes.
func TestNCCLBadArguments(t *testing.T) {
	c, _ := gpu(t)
	if _, _, err := NCCLVersion(); err != nil {
		gputest.SkipOrFail(t, err)
	}
	var id NCCLUniqueID
	if _, err := NewNCCLComm(c, id, 2, 2); err == nil || !strings.Contains(err.Error(), "rank 2 of 2") {
		t.Fatalf("rank 2 of 2: %v", err)
	}
	ranks := ncclGroup(t, 1)
	err := ranks[0].comm.AllToAllV(c.Stream(), 0, []int{1, 2}, []int{0, 1}, 0, []int{1}, []int{0}, NCCLFloat32)
	if err == nil || !strings.Contains(err.Error(), "all-to-all-v over 1 ranks") {
		t.Fatalf("mismatched counts: %v", err)
	}
}
