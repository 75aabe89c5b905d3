package gpu

import (
	"fmt"
	"os"
	"strconv"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/gpu/ops"
)

// lane is a stream the experts' work runs on beside the others: one expert's
// products are too small to fill the GPU (a wave and a fraction of tiles, or
// less than one for its weight gradients), so experts go round-robin over
// the lanes and their tiles fill what the others leave idle. Each expert's
// chain stays on one lane and writes only its own rows and weights, so the
// results do not depend on how the lanes interleave.
type lane struct {
	s    cuda.Stream
	o    *ops.Ops
	done cuda.Event
}

// defaultLanes is the number of expert streams; MOETRAIN_GPU_LANES
// overrides it (1 runs the experts one after another on the main stream's
// order, for comparison).
const defaultLanes = 4

// lanesFromEnv reads MOETRAIN_GPU_LANES (1 to 16).
func lanesFromEnv() (int, error) {
	v := os.Getenv("MOETRAIN_GPU_LANES")
	if v == "" {
		return defaultLanes, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 16 {
		return 0, fmt.Errorf("gpu: MOETRAIN_GPU_LANES=%q: want an integer from 1 to 16", v)
	}
	return n, nil
}

// openLanes creates n expert lanes, the optimizer's lane and the fork
// event.
func (d *Device) openLanes(n int) error {
	var err error
	if d.fork, err = d.C.NewSyncEvent(); err != nil {
		return err
	}
	newLane := func() (lane, error) {
		s, err := d.C.NewStream()
		if err != nil {
			return lane{}, err
		}
		e, err := d.C.NewSyncEvent()
		if err != nil {
			d.C.DestroyStream(s)
			return lane{}, err
		}
		return lane{s: s, o: d.Ops.OnStream(s), done: e}, nil
	}
	for range n {
		l, err := newLane()
		if err != nil {
			return err
		}
		d.lanes = append(d.lanes, l)
	}
	l, err := newLane()
	if err != nil {
		return err
	}
	d.optLane = &l
	return nil
}

// join makes the main stream wait for everything queued on l so far.
func (d *Device) join(l *lane) error {
	if err := d.C.Record(l.done, l.s); err != nil {
		return err
	}
	return d.C.Wait(d.Ops.S, l.done)
}

// fanOut runs fn(x, lane) for x < n with lane x mod len(lanes), the lanes
// starting after everything queued on the main stream so far and the main
// stream continuing after all of them. Under a profile the whole fan-out is
// one span named name in family "gemm" (the lanes' own launches are not
// timed: a profile times one stream).
func (d *Device) fanOut(name string, n int, fn func(x int, l *lane) error) error {
	run := func() error {
		if err := d.C.Record(d.fork, d.Ops.S); err != nil {
			return err
		}
		used := min(n, len(d.lanes))
		for i := range used {
			if err := d.C.Wait(d.lanes[i].s, d.fork); err != nil {
				return err
			}
		}
		var ferr error
		for x := 0; x < n && ferr == nil; x++ {
			ferr = fn(x, &d.lanes[x%len(d.lanes)])
		}
		// Join even after a failure, so the main stream never runs ahead
		// of work already queued on a lane.
		for i := range used {
			if err := d.C.Record(d.lanes[i].done, d.lanes[i].s); err != nil {
				return err
			}
			if err := d.C.Wait(d.Ops.S, d.lanes[i].done); err != nil {
				return err
			}
		}
		return ferr
	}
	if d.Ops.Prof != nil {
		return d.Ops.Prof.Span("gemm", "gemm."+name, run)
	}
	return run()
}

// gemmOn is gemmT queued on lane l (never profiled on its own).
func (d *Device) gemmOn(l *lane, transA, transB bool, m, n, k int, a cuda.DevicePtr, lda int, b cuda.DevicePtr, ldb int, beta float32, c cuda.DevicePtr, ldc int, ab, cd cuda.DType) error {
	if k == 0 {
		return fmt.Errorf("gpu: expert product with an empty inner size")
	}
	g := cuda.GemmSpec{TransA: transA, TransB: transB, M: m, N: n, K: k, LDA: lda, LDB: ldb, LDC: ldc, AB: ab, CD: cd}
	return d.Blas.Gemm(l.s, g, 1, a, b, beta, c)
}
