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
//
// The receives of every exchange are posted before the first one starts,
// into places that nothing else touches until they are waited for: each
// reduce-scatter step into its own part of one temporary, each all-gather
// step into the part of buf it fills. A partner that runs a step ahead then
// writes straight into place instead of into a buffer that is copied later.
func halvingDoubling(ctx context.Context, o *opRun, buf []float32, divisor float32) error {
	n, r := len(o.c.ranks), o.c.rank
	if n&(n-1) != 0 {
		return fmt.Errorf("halving-doubling needs a power-of-two group, have %d ranks", n)
	}
	const stride = 1 << 24 // tag steps per exchange
	seg := max(o.c.cfg.SegmentBytes/4, 16)
	type window struct{ lo, hi int }

	// Plan: reduce-scatter halves the window at distance n/2, n/4, ..., 1
	// (rank r ends up owning block r); the all-gather doubles it back.
	var xs []*segExchange
	var keeps []window
	wins := []window{}
	w := window{0, len(buf)}
	tmpLen := 0
	for d := n / 2; d >= 1; d /= 2 {
		mid := w.lo + (w.hi-w.lo)/2
		keep, give := window{w.lo, mid}, window{mid, w.hi}
		if r&d != 0 {
			keep, give = give, keep
		}
		wins = append(wins, w)
		keeps = append(keeps, keep)
		xs = append(xs, &segExchange{peer: r ^ d, send: buf[give.lo:give.hi]})
		tmpLen += keep.hi - keep.lo
		w = keep
	}
	owned := w
	for i := len(wins) - 1; i >= 0; i-- {
		parent := wins[i]
		other := window{parent.lo, w.lo}
		if w.lo == parent.lo {
			other = window{w.hi, parent.hi}
		}
		xs = append(xs, &segExchange{peer: r ^ (n >> (i + 1)), send: buf[w.lo:w.hi], recv: buf[other.lo:other.hi]})
		w = parent
	}
	tmp := getF32(tmpLen)
	defer putF32(tmp)
	off := 0
	for i, keep := range keeps {
		x := xs[i]
		x.recv = tmp[off : off+keep.hi-keep.lo]
		off += keep.hi - keep.lo
		x.onSeg = func(lo, hi int) {
			addTo(buf[keep.lo+lo:keep.lo+hi], buf[keep.lo+lo:keep.lo+hi], x.recv[lo:hi])
		}
	}
	for i, x := range xs {
		x.base, x.seg = uint32(i*stride), seg
		x.post(o)
	}
	for i, x := range xs {
		err := x.run(ctx, o)
		if err == nil && i == len(keeps)-1 && divisor != 0 {
			divide(buf[owned.lo:owned.hi], divisor)
		}
		if err != nil {
			for _, y := range xs[i+1:] {
				y.withdraw(o)
			}
			return err
		}
	}
	return nil
}

// segExchange sends send to peer and receives the peer's matching message
// into recv at the same time, both in segments of seg elements tagged base,
// base+1, ...; onSeg (if not nil) is called for each received segment
// [lo, hi) of recv in order while later ones are still in flight.
type segExchange struct {
	peer       int
	base       uint32
	seg        int
	send, recv []float32
	onSeg      func(lo, hi int)
	pend       []Pending
}

// post registers the receives, so payloads land in recv directly.
func (x *segExchange) post(o *opRun) {
	nr := (len(x.recv) + x.seg - 1) / x.seg
	x.pend = make([]Pending, nr)
	for k := range nr {
		lo, hi := k*x.seg, min((k+1)*x.seg, len(x.recv))
		x.pend[k] = o.post(x.peer, x.base+uint32(k), f32bytes(x.recv[lo:hi]))
	}
}

// withdraw cancels the posted receives of an exchange that will not run.
func (x *segExchange) withdraw(o *opRun) {
	for _, p := range x.pend {
		o.withdraw(p)
	}
}

// run sends and waits for the posted receives.
func (x *segExchange) run(ctx context.Context, o *opRun) error {
	if ss := asyncSender(o.c.t); ss != nil {
		return x.runQueued(ctx, o, ss)
	}
	seg, nr := x.seg, len(x.pend)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var sendErr error
	oc := *o // the goroutine holds a copy: o may live on the caller's stack
	wg.Add(1)
	go func() {
		defer wg.Done()
		for k := 0; k*seg < len(x.send); k++ {
			lo, hi := k*seg, min((k+1)*seg, len(x.send))
			if err := oc.send(ctx, x.peer, x.base+uint32(k), f32bytes(x.send[lo:hi])); err != nil {
				sendErr = err
				cancel()
				return
			}
		}
	}()
	var recvErr error
	k := 0
	for ; k < nr; k++ {
		if err := o.wait(ctx, x.peer, x.pend[k]); err != nil {
			recvErr = err
			cancel()
			break
		}
		if x.onSeg != nil {
			x.onSeg(k*seg, min((k+1)*seg, len(x.recv)))
		}
	}
	for k++; k < nr; k++ {
		o.withdraw(x.pend[k])
	}
	wg.Wait()
	return rootCause(recvErr, sendErr)
}

// runQueued is run with queued sends: this goroutine moves every frame while
// it waits, and reduces in pieces between which the sockets are served.
func (x *segExchange) runQueued(ctx context.Context, o *opRun, ss sendStarter) error {
	seg := x.seg
	var sent []Pending
	for k := 0; k*seg < len(x.send); k++ {
		lo, hi := k*seg, min((k+1)*seg, len(x.send))
		sent = append(sent, ss.startSend(o.c.ranks[x.peer], o.header(x.base+uint32(k)), f32bytes(x.send[lo:hi])))
	}
	var first error
	for k, p := range x.pend {
		if first != nil {
			o.withdraw(p)
			continue
		}
		if err := o.wait(ctx, x.peer, p); err != nil {
			first = err
			continue
		}
		if x.onSeg != nil {
			lo, hi := k*seg, min((k+1)*seg, len(x.recv))
			inPieces(ss, hi-lo, func(a, b int) { x.onSeg(lo+a, lo+b) })
		}
	}
	// Sends are waited for under ctx even after a failed receive: ctx is the
	// operation's own, and a frame withdrawn half written would cut the link.
	for _, p := range sent {
		if _, err := p.Wait(ctx); err != nil && first == nil {
			first = fmt.Errorf("send to rank %d: %w", o.c.ranks[x.peer], err)
		}
		release(p)
	}
	for _, p := range x.pend {
		release(p) // each was waited on or withdrawn above
	}
	return first
}
