package collective

import (
	"context"
	"fmt"
	"math/bits"
)

func checkReduceOp(op ReduceOp) error {
	if op != Sum && op != Mean {
		return fmt.Errorf("collective: unknown reduce op %v", op)
	}
	return nil
}

// AllReduce replaces buf on every member with the element-wise reduction of
// all members' buf. The result is bitwise identical on every member and
// independent of timing. Messages of at most Config.SmallBytes use recursive
// doubling (log2 n exchanges of the whole buffer); larger ones over a
// power-of-two group of more than two up to Config.HalvingBytes recursive
// halving + doubling;
// the rest the pipelined ring (reduce-scatter + all-gather, 2(n-1)/n of the
// buffer per link).
func (c *Comm) AllReduce(ctx context.Context, buf []float32, op ReduceOp) error {
	if err := checkReduceOp(op); err != nil {
		return err
	}
	o := c.begin(OpAllReduce, len(buf))
	return o.run(ctx, func(ctx context.Context) error { return allReduce(ctx, &o, buf, op) })
}

// AllReduceAsync starts AllReduce; buf must not be touched until Wait returns.
func (c *Comm) AllReduceAsync(buf []float32, op ReduceOp) *Request {
	if err := checkReduceOp(op); err != nil {
		return failedRequest(err)
	}
	o := c.begin(OpAllReduce, len(buf))
	return o.async(func(ctx context.Context) error { return allReduce(ctx, &o, buf, op) })
}

func allReduce(ctx context.Context, o *opRun, buf []float32, op ReduceOp) error {
	n := len(o.c.ranks)
	if n == 1 {
		return nil
	}
	var div float32
	if op == Mean {
		div = float32(n)
	}
	pow2 := n&(n-1) == 0 && n > 2
	if len(buf)*4 <= o.c.cfg.SmallBytes || len(buf) < n {
		if err := recursiveDoubling(ctx, o, buf); err != nil {
			return err
		}
		if div != 0 {
			divide(buf, div)
		}
		return nil
	}
	if pow2 && len(buf)*4 <= o.c.cfg.HalvingBytes {
		return halvingDoubling(ctx, o, buf, div)
	}
	off, ln := equalChunks(len(buf), n)
	sp := &ringSpec{doRS: true, doAG: true, src: buf, inPlace: true, ag: buf, divisor: div,
		off: off, ln: ln, seg: max(o.c.cfg.SegmentBytes/4, 16)}
	sp.out = buf[off[o.c.rank] : off[o.c.rank]+ln[o.c.rank]]
	return runRing(ctx, o, sp)
}

// recursiveDoubling sums buf over the group. With p the largest power of two
// not above n, the first 2(n-p) ranks fold in pairs (odd into even), the p
// remaining ranks exchange whole buffers with partners at distance 1, 2, 4...
// (a+b on one side, b+a on the other: bitwise equal), and the folded ranks
// get the result back. Steps of the tag: 0 fold, 1..log2 p exchanges, then unfold.
func recursiveDoubling(ctx context.Context, o *opRun, buf []float32) error {
	n, r := len(o.c.ranks), o.c.rank
	p := 1
	for p*2 <= n {
		p *= 2
	}
	extra := n - p
	b := f32bytes(buf)
	tmp := getF32(len(buf))
	defer putF32(tmp)
	tb := f32bytes(tmp)
	newRank := -1
	switch {
	case r < 2*extra && r%2 == 1:
		if err := o.send(ctx, r-1, 0, b); err != nil {
			return err
		}
	case r < 2*extra:
		if err := o.recv(ctx, r+1, 0, tb); err != nil {
			return err
		}
		addTo(buf, buf, tmp)
		newRank = r / 2
	default:
		newRank = r - extra
	}
	if newRank >= 0 {
		step := uint32(1)
		for mask := 1; mask < p; mask <<= 1 {
			pn := newRank ^ mask
			peer := pn + extra
			if pn < extra {
				peer = pn * 2
			}
			// Post the receive first so the partner's payload lands in tmp
			// directly; sending before waiting cannot deadlock because
			// transports always drain incoming frames.
			pd := o.post(peer, step, tb)
			if err := o.send(ctx, peer, step, b); err != nil {
				o.withdraw(pd)
				return err
			}
			err := o.wait(ctx, peer, pd)
			release(pd)
			if err != nil {
				return err
			}
			addTo(buf, buf, tmp)
			step++
		}
	}
	unfold := uint32(1 + bits.TrailingZeros(uint(p))) // after the log2 p exchanges
	switch {
	case r < 2*extra && r%2 == 1:
		return o.recv(ctx, r-1, unfold, b)
	case r < 2*extra:
		return o.send(ctx, r+1, unfold, b)
	}
	return nil
}
