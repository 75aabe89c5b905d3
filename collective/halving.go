package collective

import (
	"context"
	"fmt"
	"sync"
)

// halvingDoubling is Rabenseifner's all-reduce for a power-of-two group:
// reduce-scatter by recursive halving, then all-gather by recursive doubling.
// It moves as many bytes as the ring (2(n-1)/n of the buffer per rank) in
// 2·log2 n exchanges instead of 2(n-1), which wins when per-step latency
// dominates (mid sizes, several ranks per core). Each exchange moves in
// segments: reduction of one segment overlaps the transfer of the next.
//
// Every element is reduced by exactly one rank per step, in a fixed tree
// given by the rank bits, so the result is independent of timing and, being
// copied in the all-gather, identical on every rank.
func halvingDoubling(ctx context.Context, o *opRun, buf []float32, divisor float32) error {
	n, r := len(o.c.ranks), o.c.rank
	if n&(n-1) != 0 {
		return fmt.Errorf("halving-doubling needs a power-of-two group, have %d ranks", n)
	}
	const stride = 1 << 24 // tag steps per exchange
	seg := max(o.c.cfg.SegmentBytes/4, 16)
	type window struct{ lo, hi int }
	steps := bitsLen(n)
	wins := make([]window, 0, steps)
	w := window{0, len(buf)}
	tmp := getF32((len(buf) + 1) / 2)
	defer putF32(tmp)
	ex := 0
	// Reduce-scatter: halve the window at distance n/2, n/4, ..., 1; rank r
	// ends up owning block r.
	for d := n / 2; d >= 1; d /= 2 {
		mid := w.lo + (w.hi-w.lo)/2
		keep, give := window{w.lo, mid}, window{mid, w.hi}
		if r&d != 0 {
			keep, give = give, keep
		}
		wins = append(wins, w)
		err := exchangeSegments(ctx, o, r^d, uint32(ex*stride), seg,
			buf[give.lo:give.hi], tmp[:keep.hi-keep.lo],
			func(lo, hi int) { addTo(buf[keep.lo+lo:keep.lo+hi], buf[keep.lo+lo:keep.lo+hi], tmp[lo:hi]) })
		if err != nil {
			return err
		}
		w = keep
		ex++
	}
	if divisor != 0 {
		divide(buf[w.lo:w.hi], divisor)
	}
	// All-gather: double the window back, in reverse order.
	for i := len(wins) - 1; i >= 0; i-- {
		d := n >> (i + 1)
		parent := wins[i]
		other := window{parent.lo, w.lo}
		if w.lo == parent.lo {
			other = window{w.hi, parent.hi}
		}
		if err := exchangeSegments(ctx, o, r^d, uint32(ex*stride), seg,
			buf[w.lo:w.hi], buf[other.lo:other.hi], nil); err != nil {
			return err
		}
		w = parent
		ex++
	}
	return nil
}

// exchangeSegments sends send to peer and receives the peer's matching
// message into recv at the same time, both in segments of seg elements
// tagged base, base+1, ... Receives are posted first, so payloads land in
// recv directly; onSeg (if not nil) is called for each received segment
// [lo, hi) of recv in order while later ones are still in flight.
func exchangeSegments(ctx context.Context, o *opRun, peer int, base uint32, seg int, send, recv []float32, onSeg func(lo, hi int)) error {
	nr := (len(recv) + seg - 1) / seg
	pend := make([]Pending, nr)
	for k := range nr {
		lo, hi := k*seg, min((k+1)*seg, len(recv))
		pend[k] = o.post(peer, base+uint32(k), f32bytes(recv[lo:hi]))
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var sendErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for k := 0; k*seg < len(send); k++ {
			lo, hi := k*seg, min((k+1)*seg, len(send))
			if err := o.send(ctx, peer, base+uint32(k), f32bytes(send[lo:hi])); err != nil {
				sendErr = err
				cancel()
				return
			}
		}
	}()
	var recvErr error
	k := 0
	for ; k < nr; k++ {
		if err := o.wait(ctx, peer, pend[k]); err != nil {
			recvErr = err
			cancel()
			break
		}
		if onSeg != nil {
			onSeg(k*seg, min((k+1)*seg, len(recv)))
		}
	}
	for k++; k < nr; k++ {
		o.withdraw(pend[k])
	}
	wg.Wait()
	if recvErr != nil && (sendErr == nil || !isCtxErr(recvErr)) {
		return recvErr
	}
	return sendErr
}
