package sp

import (
	"context"
	"fmt"
	"math"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/tensor"
)

// TokenRing keeps K,V (and so dK,dV) on their rank. At step s rank i works on
// the query block of rank r = i−s: it arrived from i−1 during step s−1 and a
// relay goroutine passed it on to i+1 as it arrived, while each partial
// result goes straight back to r as soon as its query chunk is done. The
// relay runs at most one step ahead (two buffer slots). Queries flow one way around
// the ring and results the other (i → i−s), so both directions of the links
// carry traffic while the ranks compute.
//
// Overlap details. A query block travels as two messages, its second chunk
// first: every other rank attends with it, the first chunk only ranks below
// the owner, so work starts when half the block has arrived. The local work
// is split around the remote steps: the full chunk pair (second query chunk
// against the first key chunk) runs first, while the first query block is in
// flight, and the two diagonal pairs run last, while the last results come
// back. Owners combine partial results in step order, so results do not
// depend on message timing.

// trSpec is what distinguishes the forward from the backward for the driver.
type trSpec struct {
	payload int                                     // floats of one travelling query chunk
	own     [2][]float32                            // this rank's travelling chunks
	result  int                                     // floats of one partial result
	local   func(first bool)                        // this rank's own work: the start part, the end part
	work    func(out, payload []float32, r, qj int) // partial result of chunk qj of rank r into zeroed out
	combine func(qj int, res []float32)             // fold a partial result into this rank's chunk qj
}

// chunkOrder is the order in which a rank processes and sends a block's chunks.
var chunkOrder = [2]int{1, 0}

func tokenRing(f *flight, c *collective.Comm, g *geom, sp trSpec) error {
	P, i := g.P, g.rank
	st, err := streams(c, f.sim, 2)
	if err != nil {
		return err
	}
	qc, rc := st[0], st[1]

	// Partial results for this rank's queries, posted now so they land in
	// place; one message per (step, query chunk with work), in the order the
	// computing rank sends them.
	type result struct {
		qj  int
		buf []float32
		r   *req
	}
	var results []result
	for s := 1; s < P; s++ {
		j := (i + s) % P
		for _, qj := range chunkOrder {
			if !g.hasWork(i, qj, j) {
				continue
			}
			buf := make([]float32, sp.result)
			results = append(results, result{qj, buf, f.recv(rc, buf, j, "step %d: result for query chunk %d", s, qj)})
		}
	}

	rl := startRelay(f, qc, g, sp)
	defer rl.stop()
	sp.local(true)
	for s := 1; s < P; s++ {
		r := (i - s + P) % P
		cur := rl.slot[s%2]
		for _, qj := range chunkOrder {
			if err := rl.arrived(); err != nil {
				return err
			}
			if g.hasWork(r, qj, i) {
				out := make([]float32, sp.result)
				sp.work(out, cur[qj], r, qj)
				f.send(rc, out, r, "step %d: result for query chunk %d of rank %d", s, qj, r)
			}
		}
		rl.freed <- s
	}
	sp.local(false)
	for _, res := range results {
		if err := f.wait(res.r); err != nil {
			return err
		}
		sp.combine(res.qj, res.buf)
	}
	if err := rl.stop(); err != nil {
		return err
	}
	return f.drain()
}

// relay moves query chunks along the ring independently of the computation:
// each chunk is passed on to the next rank the moment it arrives, so a slow
// step does not hold up the ranks behind. Chunks of step s land in
// slot[s%2]; the relay refills a slot only after the computation has freed
// the step that used it and the relay's sends out of it have completed.
type relay struct {
	slot   [2][2][]float32
	ready  chan error // one per chunk, in step and chunkOrder order
	freed  chan int   // steps the computation is done with
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func startRelay(f *flight, qc *collective.Comm, g *geom, sp trSpec) *relay {
	P, i := g.P, g.rank
	next, prev := (i+1)%P, (i+P-1)%P
	ctx, cancel := context.WithCancel(f.ctx)
	rl := &relay{ready: make(chan error, 2*P), freed: make(chan int, P), cancel: cancel, done: make(chan struct{})}
	for a := range rl.slot {
		for j := range 2 {
			rl.slot[a][j] = make([]float32, sp.payload)
			if f.sim {
				copy(rl.slot[a][j], sp.own[j])
			}
		}
	}
	// sends[a] are the sends out of slot a; step 0's go out of own.
	var sends [2][2]*req
	for _, j := range chunkOrder {
		if P > 1 {
			f.send(qc, sp.own[j], next, "step 0: query chunk %d of rank %d", j, i)
		}
	}
	go func() {
		defer close(rl.done)
		fail := func(err error) { rl.err = err; rl.ready <- err }
		for s := 1; s < P; s++ {
			a := s % 2
			if s >= 3 {
				select {
				case <-rl.freed:
				case <-ctx.Done():
					fail(fmt.Errorf("sp %s: relay: %w", f.what, ctx.Err()))
					return
				}
				for _, j := range chunkOrder {
					if err := f.waitCtx(ctx, sends[a][j]); err != nil {
						fail(err)
						return
					}
				}
			}
			var recvs [2]*req
			for _, j := range chunkOrder {
				recvs[j] = f.recv(qc, rl.slot[a][j], prev, "step %d: query chunk %d of rank %d", s, j, (i-s+P)%P)
			}
			for _, j := range chunkOrder {
				if err := f.waitCtx(ctx, recvs[j]); err != nil {
					fail(err)
					return
				}
				if s+1 < P {
					sends[a][j] = f.send(qc, rl.slot[a][j], next, "step %d: pass on query chunk %d of rank %d", s, j, (i-s+P)%P)
				}
				rl.ready <- nil
			}
		}
	}()
	return rl
}

// arrived waits for the next query chunk (in step, chunkOrder order).
func (rl *relay) arrived() error { return <-rl.ready }

// stop ends the relay (at once if it is still waiting) and returns its error.
// The relay's messages are left to the flight's drain or abandon.
func (rl *relay) stop() error {
	if rl.cancel == nil {
		return rl.err
	}
	select {
	case <-rl.done:
	default:
		rl.cancel()
		<-rl.done
	}
	rl.cancel()
	rl.cancel = nil
	return rl.err
}

// hasWork reports whether query chunk qj of rank qr sees any key of rank kr.
func (g *geom) hasWork(qr, qj, kr int) bool {
	_, _, n := g.visible(qr, qj, kr)
	return n > 0
}

// tokenRingForward computes packed (o, lse) of this rank's queries from
// packed q, k, v.
func tokenRingForward(f *flight, c *collective.Comm, g *geom, o, lse, q, k, v []float32) error {
	scr, tmp := g.newFwdScratch(), g.newFwdScratch()
	nr := g.rowsChunk()
	return tokenRing(f, c, g, trSpec{
		payload: nr,
		own:     [2][]float32{g.rows(q, 0), g.rows(q, 1)},
		result:  nr + g.statChunk(),
		local: func(first bool) {
			if first {
				// Chunk 1 starts from its full pair; chunk 0 from "nothing
				// visible", which the merges treat as absent.
				tensor.AttentionForward(g.rows(o, 1), g.stats(lse, 1), g.rows(q, 1), g.rows(k, 0), g.rows(v, 0), g.shape(false))
				clear(g.rows(o, 0))
				l0 := g.stats(lse, 0)
				for x := range l0 {
					l0[x] = float32(math.Inf(-1))
				}
				return
			}
			for j := range 2 {
				tensor.AttentionForward(tmp.o, tmp.lse, g.rows(q, j), g.rows(k, j), g.rows(v, j), g.shape(true))
				g.merge(g.rows(o, j), g.stats(lse, j), tmp.o, tmp.lse)
			}
		},
		work: func(out, payload []float32, r, qj int) {
			g.forwardChunk(out[:nr], out[nr:], payload, k, v, r, qj, g.rank, scr)
		},
		combine: func(qj int, res []float32) {
			g.merge(g.rows(o, qj), g.stats(lse, qj), res[:nr], res[nr:])
		},
	})
}

// tokenRingBackward accumulates packed dq, dk, dv. A travelling query chunk
// is [q | do | lse | d]; partial dq come back per query chunk.
func tokenRingBackward(f *flight, c *collective.Comm, g *geom, dq, dk, dv, do, q, k, v, lse, d []float32) error {
	nr, ns := g.rowsChunk(), g.statChunk()
	var own [2][]float32
	for j := range 2 {
		b := make([]float32, 2*nr+2*ns)
		copy(b, g.rows(q, j))
		copy(b[nr:], g.rows(do, j))
		copy(b[2*nr:], g.stats(lse, j))
		copy(b[2*nr+ns:], g.stats(d, j))
		own[j] = b
	}
	i := g.rank
	return tokenRing(f, c, g, trSpec{
		payload: 2*nr + 2*ns,
		own:     own,
		result:  nr,
		local: func(first bool) {
			if first {
				tensor.AttentionBackward(g.rows(dq, 1), g.rows(dk, 0), g.rows(dv, 0), g.rows(do, 1), g.rows(q, 1),
					g.rows(k, 0), g.rows(v, 0), g.stats(lse, 1), g.stats(d, 1), g.shape(false))
				return
			}
			for j := range 2 {
				tensor.AttentionBackward(g.rows(dq, j), g.rows(dk, j), g.rows(dv, j), g.rows(do, j), g.rows(q, j),
					g.rows(k, j), g.rows(v, j), g.stats(lse, j), g.stats(d, j), g.shape(true))
			}
		},
		work: func(out, p []float32, r, qj int) {
			g.backwardChunk(out, dk, dv, p[nr:2*nr], p[:nr], k, v, p[2*nr:2*nr+ns], p[2*nr+ns:], r, qj, i)
		},
		combine: func(qj int, res []float32) { addTo(g.rows(dq, qj), res) },
	})
}
