package sp

import (
	"github.com/moetrain/moetrain/collective"
)

// Ring attention (the baseline): the K,V block of every rank travels once
// around the ring (i → i+1); at step s rank i holds the block of rank i−s and
// sends it on while computing with it. Partial outputs merge by the
// log-sum-exp rule. The backward rotates K,V the same way, and behind them the
// dK,dV accumulator of each block: a rank computes its contribution into a
// fresh buffer while the accumulator arrives, adds it and passes it on, so
// after a full turn every accumulator arrives home.

// ringForward computes packed (o, lse) of this rank's queries.
func ringForward(f *flight, c *collective.Comm, g *geom, o, lse, q, k, v []float32) error {
	P, i := g.P, g.rank
	next, prev := (i+1)%P, (i+P-1)%P
	st, err := streams(c, f.sim, 1)
	if err != nil {
		return err
	}
	kvc := st[0]
	nr := 2 * g.rowsChunk()
	var kv [2][]float32
	kv[0] = make([]float32, 2*nr)
	copy(kv[0], k)
	copy(kv[0][nr:], v)
	kv[1] = make([]float32, 2*nr)
	if f.sim {
		copy(kv[1], kv[0])
	}
	scr, tmp := g.newFwdScratch(), g.newFwdScratch()
	var kvSend, kvRecv *req
	for s := range P {
		j := (i - s + P) % P
		cur := kv[s%2]
		if s+1 < P {
			if err := f.wait(kvSend); err != nil { // frees kv[(s+1)%2]
				return err
			}
			kvRecv = f.recv(kvc, kv[(s+1)%2], prev, "step %d: K,V of rank %d", s+1, (j+P-1)%P)
			kvSend = f.send(kvc, cur, next, "step %d: pass on K,V of rank %d", s, j)
		}
		ck, cv := cur[:nr], cur[nr:]
		for qj := range 2 {
			oc, lc, qc := g.rows(o, qj), g.stats(lse, qj), g.rows(q, qj)
			if s == 0 {
				g.forwardChunk(oc, lc, qc, ck, cv, i, qj, j, scr)
				continue
			}
			if g.forwardChunk(tmp.o, tmp.lse, qc, ck, cv, i, qj, j, scr) {
				g.merge(oc, lc, tmp.o, tmp.lse)
			}
		}
		if err := f.wait(kvRecv); err != nil {
			return err
		}
	}
	return f.drain()
}

// ringBackward accumulates packed dq, dk, dv.
func ringBackward(f *flight, c *collective.Comm, g *geom, dq, dk, dv, do, q, k, v, lse, d []float32) error {
	P, i := g.P, g.rank
	next, prev := (i+1)%P, (i+P-1)%P
	st, err := streams(c, f.sim, 2)
	if err != nil {
		return err
	}
	kvc, ac := st[0], st[1]
	nr := 2 * g.rowsChunk()
	var kv, gs, gr [2][]float32
	for j := range 2 {
		kv[j], gs[j], gr[j] = make([]float32, 2*nr), make([]float32, 2*nr), make([]float32, 2*nr)
	}
	copy(kv[0], k)
	copy(kv[0][nr:], v)
	if f.sim {
		copy(kv[1], kv[0])
	}
	var kvSend, kvRecv *req
	var gSend, gRecv [2]*req
	for s := range P {
		j := (i - s + P) % P
		cur := kv[s%2]
		if s+1 < P {
			if err := f.wait(kvSend); err != nil {
				return err
			}
			kvRecv = f.recv(kvc, kv[(s+1)%2], prev, "step %d: K,V of rank %d", s+1, (j+P-1)%P)
			kvSend = f.send(kvc, cur, next, "step %d: pass on K,V of rank %d", s, j)
		}
		// The accumulator used at step s+1 (or, after the last step, this
		// rank's own dK,dV coming home) lands in gr[(s+1)%2], consumed at s−1.
		if P > 1 {
			gRecv[(s+1)%2] = f.recv(ac, gr[(s+1)%2], prev, "step %d: dK,dV accumulator of rank %d", s+1, (j+P-1)%P)
		}
		blk := gs[s%2]
		if err := f.wait(gSend[s%2]); err != nil {
			return err
		}
		clear(blk)
		ck, cv := cur[:nr], cur[nr:]
		gk, gv := blk[:nr], blk[nr:]
		for qj := range 2 {
			g.backwardChunk(g.rows(dq, qj), gk, gv, g.rows(do, qj), g.rows(q, qj), ck, cv, g.stats(lse, qj), g.stats(d, qj), i, qj, j)
		}
		if P == 1 {
			addTo(dk, gk)
			addTo(dv, gv)
			break
		}
		if s > 0 {
			if err := f.wait(gRecv[s%2]); err != nil {
				return err
			}
			addTo(blk, gr[s%2])
		}
		gSend[s%2] = f.send(ac, blk, next, "step %d: dK,dV accumulator of rank %d", s, j)
		if err := f.wait(kvRecv); err != nil {
			return err
		}
	}
	if P > 1 {
		if err := f.wait(gRecv[P%2]); err != nil {
			return err
		}
		home := gr[P%2]
		addTo(dk, home[:nr])
		addTo(dv, home[nr:])
	}
	return f.drain()
}
