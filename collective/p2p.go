package collective

import (
	"context"
	"errors"
	"fmt"
)

func isCtxErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// p2pSeqBit marks point-to-point tags: their sequence numbers count per
// (sender, receiver) pair, apart from the collective sequence.
const p2pSeqBit = 1 << 63

func (c *Comm) p2p(peer int, sending bool, count int) (*opRun, error) {
	if peer < 0 || peer >= len(c.ranks) || peer == c.rank {
		return nil, fmt.Errorf("collective: point-to-point on %s: peer %d is not another member (0..%d, self %d)", c.name, peer, len(c.ranks)-1, c.rank)
	}
	c.mu.Lock()
	var s uint64
	if sending {
		s = c.p2pSend[peer]
		c.p2pSend[peer] = s + 1
	} else {
		s = c.p2pRecv[peer]
		c.p2pRecv[peer] = s + 1
	}
	c.mu.Unlock()
	return &opRun{c: c, op: OpSendRecv, seq: p2pSeqBit | s, count: uint64(count)}, nil
}

// Send sends buf to member peer, matched with that member's Recv from this
// rank in call order. Both sides must agree on the length.
func (c *Comm) Send(ctx context.Context, buf []float32, peer int) error {
	o, err := c.p2p(peer, true, len(buf))
	if err != nil {
		return err
	}
	return o.run(ctx, func(ctx context.Context) error { return o.send(ctx, peer, 0, f32bytes(buf)) })
}

// Recv receives into buf the next Send from member peer.
func (c *Comm) Recv(ctx context.Context, buf []float32, peer int) error {
	o, err := c.p2p(peer, false, len(buf))
	if err != nil {
		return err
	}
	return o.run(ctx, func(ctx context.Context) error { return o.recv(ctx, peer, 0, f32bytes(buf)) })
}

// SendAsync starts Send.
func (c *Comm) SendAsync(buf []float32, peer int) *Request {
	o, err := c.p2p(peer, true, len(buf))
	if err != nil {
		return failedRequest(err)
	}
	return o.async(func(ctx context.Context) error { return o.send(ctx, peer, 0, f32bytes(buf)) })
}

// RecvAsync starts Recv.
func (c *Comm) RecvAsync(buf []float32, peer int) *Request {
	o, err := c.p2p(peer, false, len(buf))
	if err != nil {
		return failedRequest(err)
	}
	return o.async(func(ctx context.Context) error { return o.recv(ctx, peer, 0, f32bytes(buf)) })
}

// RingExchange is a collective over the ring of members: each member sends
// toNext to member Rank()+1 and toPrev to member Rank()-1 and, at the same
// time, receives fromPrev (the previous member's toNext) and fromNext (the
// next member's toPrev). Lengths must match pairwise. With one member the
// buffers are copied across.
func (c *Comm) RingExchange(ctx context.Context, toNext, toPrev, fromPrev, fromNext []float32) error {
	o := c.begin(OpRingExchange, 0)
	return o.run(ctx, func(ctx context.Context) error { return ringExchange(ctx, &o, toNext, toPrev, fromPrev, fromNext) })
}

// RingExchangeAsync starts RingExchange.
func (c *Comm) RingExchangeAsync(toNext, toPrev, fromPrev, fromNext []float32) *Request {
	o := c.begin(OpRingExchange, 0)
	return o.async(func(ctx context.Context) error { return ringExchange(ctx, &o, toNext, toPrev, fromPrev, fromNext) })
}

// Tag steps: 0 travels forward (to next), 1 backward (to prev), so the two
// directions stay apart even when next == prev.
func ringExchange(ctx context.Context, o *opRun, toNext, toPrev, fromPrev, fromNext []float32) error {
	n, r := len(o.c.ranks), o.c.rank
	if n == 1 {
		if len(fromPrev) != len(toNext) || len(fromNext) != len(toPrev) {
			return fmt.Errorf("ring exchange with itself: lengths %d→%d and %d→%d differ", len(toNext), len(fromPrev), len(toPrev), len(fromNext))
		}
		copy(fromPrev, toNext)
		copy(fromNext, toPrev)
		return nil
	}
	next, prev := mod(r+1, n), mod(r-1, n)
	header := func(step uint32, dst []float32) Header {
		h := o.header(step)
		h.Count = uint64(len(dst))
		return h
	}
	hNext, hPrev := header(0, toNext), header(1, toPrev)
	wantPrev, wantNext := header(0, fromPrev), header(1, fromNext)
	if ss := asyncSender(o.c.t); ss != nil {
		return ringExchangeQueued(ctx, o, ss, next, prev, hNext, hPrev, wantPrev, wantNext, toNext, toPrev, fromPrev, fromNext)
	}
	// The goroutines hold the transport and the ranks, not o, which may
	// live on the caller's stack.
	t, ranks := o.c.t, o.c.ranks
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := make(chan error, 3)
	recvOne := func(peer int, want Header, dst []float32) {
		if _, err := t.Recv(ctx, ranks[peer], want, f32bytes(dst)); err != nil {
			cancel()
			out <- fmt.Errorf("receive from rank %d: %w", ranks[peer], err)
			return
		}
		out <- nil
	}
	go recvOne(prev, wantPrev, fromPrev)
	go recvOne(next, wantNext, fromNext)
	go func() {
		if err := t.Send(ctx, ranks[prev], hPrev, f32bytes(toPrev)); err != nil {
			cancel()
			out <- fmt.Errorf("send to rank %d: %w", ranks[prev], err)
			return
		}
		out <- nil
	}()
	var first error
	if err := t.Send(ctx, ranks[next], hNext, f32bytes(toNext)); err != nil {
		cancel()
		first = fmt.Errorf("send to rank %d: %w", ranks[next], err)
	}
	for range 3 {
		first = rootCause(first, <-out)
	}
	return first
}

// ringExchangeQueued is ringExchange over queued sends: both receives are
// posted and both frames queued at once, and this goroutine moves them all
// while it waits; nothing is allocated.
func ringExchangeQueued(ctx context.Context, o *opRun, ss sendStarter, next, prev int, hNext, hPrev, wantPrev, wantNext Header, toNext, toPrev, fromPrev, fromNext []float32) error {
	t, ranks := o.c.t, o.c.ranks
	recvs := [2]Pending{
		t.Post(ranks[prev], wantPrev, f32bytes(fromPrev)),
		t.Post(ranks[next], wantNext, f32bytes(fromNext)),
	}
	sends := [2]Pending{
		ss.startSend(ranks[next], hNext, f32bytes(toNext)),
		ss.startSend(ranks[prev], hPrev, f32bytes(toPrev)),
	}
	from, to := [2]int{prev, next}, [2]int{next, prev}
	var first error
	for i, p := range recvs {
		if first != nil {
			o.withdraw(p)
			continue
		}
		if _, err := p.Wait(ctx); err != nil {
			first = fmt.Errorf("receive from rank %d: %w", ranks[from[i]], err)
		}
	}
	var sendErr error
	for i, p := range sends {
		// Under ctx even after a failed receive: ctx is the operation's own,
		// and a frame withdrawn half written would cut a healthy link.
		if _, err := p.Wait(ctx); err != nil && sendErr == nil {
			sendErr = fmt.Errorf("send to rank %d: %w", ranks[to[i]], err)
		}
	}
	for i := range 2 {
		release(recvs[i])
		release(sends[i])
	}
	return rootCause(first, sendErr)
}

// Barrier returns once every member has entered it.
func (c *Comm) Barrier(ctx context.Context) error {
	if len(c.ranks) == 1 {
		return nil
	}
	o := c.begin(OpBarrier, 0)
	return o.run(ctx, func(ctx context.Context) error { return recursiveDoubling(ctx, &o, nil) })
}
