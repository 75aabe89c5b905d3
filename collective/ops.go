package collective

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"unsafe"
)

func sameStart(a, b []float32) bool {
	return len(a) > 0 && len(b) > 0 && unsafe.SliceData(a) == unsafe.SliceData(b)
}

// ReduceScatter reduces send (Size() blocks of len(recv) elements) over the
// members and leaves block Rank() of the result in recv. send is not
// modified, except that recv may be send's block Rank() (in place).
func (c *Comm) ReduceScatter(ctx context.Context, send, recv []float32, op ReduceOp) error {
	o, fn, err := c.reduceScatter(send, recv, op)
	if err != nil {
		return err
	}
	return o.run(ctx, fn)
}

// ReduceScatterAsync starts ReduceScatter.
func (c *Comm) ReduceScatterAsync(send, recv []float32, op ReduceOp) *Request {
	o, fn, err := c.reduceScatter(send, recv, op)
	if err != nil {
		return failedRequest(err)
	}
	return o.async(fn)
}

func (c *Comm) reduceScatter(send, recv []float32, op ReduceOp) (*opRun, func(context.Context) error, error) {
	if err := checkReduceOp(op); err != nil {
		return nil, nil, err
	}
	n := len(c.ranks)
	if len(send) != n*len(recv) {
		return nil, nil, fmt.Errorf("collective: reducescatter on %s: send has %d elements, want %d blocks of %d", c.name, len(send), n, len(recv))
	}
	o := c.begin(OpReduceScatter, len(send))
	return &o, func(ctx context.Context) error {
		m := len(recv)
		if n == 1 {
			copy(recv, send)
			return nil
		}
		off, ln := fixedChunks(m, n)
		sp := &ringSpec{doRS: true, src: send, out: recv, off: off, ln: ln, seg: max(c.cfg.SegmentBytes/4, 16)}
		if op == Mean {
			sp.divisor = float32(n)
		}
		return runRing(ctx, &o, sp)
	}, nil
}

// AllGather concatenates every member's send (all of equal length) into recv
// in rank order. send may be recv's block Rank() (in place).
func (c *Comm) AllGather(ctx context.Context, send, recv []float32) error {
	o, fn, err := c.allGather(send, recv)
	if err != nil {
		return err
	}
	return o.run(ctx, fn)
}

// AllGatherAsync starts AllGather.
func (c *Comm) AllGatherAsync(send, recv []float32) *Request {
	o, fn, err := c.allGather(send, recv)
	if err != nil {
		return failedRequest(err)
	}
	return o.async(fn)
}

func (c *Comm) allGather(send, recv []float32) (*opRun, func(context.Context) error, error) {
	n := len(c.ranks)
	if len(recv) != n*len(send) {
		return nil, nil, fmt.Errorf("collective: allgather on %s: recv has %d elements, want %d blocks of %d", c.name, len(recv), n, len(send))
	}
	o := c.begin(OpAllGather, len(recv))
	return &o, func(ctx context.Context) error {
		m := len(send)
		mine := recv[c.rank*m : (c.rank+1)*m]
		if !sameStart(mine, send) {
			copy(mine, send)
		}
		if n == 1 {
			return nil
		}
		off, ln := fixedChunks(m, n)
		sp := &ringSpec{doAG: true, ag: recv, off: off, ln: ln, seg: max(c.cfg.SegmentBytes/4, 16)}
		return runRing(ctx, &o, sp)
	}, nil
}

// Broadcast copies root's buf into every member's buf. Small buffers go down
// a binomial tree; large ones down a pipelined chain of segments.
func (c *Comm) Broadcast(ctx context.Context, buf []float32, root int) error {
	o, fn, err := c.broadcast(buf, root)
	if err != nil {
		return err
	}
	return o.run(ctx, fn)
}

// BroadcastAsync starts Broadcast.
func (c *Comm) BroadcastAsync(buf []float32, root int) *Request {
	o, fn, err := c.broadcast(buf, root)
	if err != nil {
		return failedRequest(err)
	}
	return o.async(fn)
}

func (c *Comm) broadcast(buf []float32, root int) (*opRun, func(context.Context) error, error) {
	n := len(c.ranks)
	if root < 0 || root >= n {
		return nil, nil, fmt.Errorf("collective: broadcast on %s: root %d outside 0..%d", c.name, root, n-1)
	}
	o := c.begin(OpBroadcast, len(buf))
	return &o, func(ctx context.Context) error {
		if n == 1 {
			return nil
		}
		v := mod(c.rank-root, n) // rank relative to root
		real := func(x int) int { return mod(x+root, n) }
		if len(buf)*4 <= c.cfg.SmallBytes {
			b := f32bytes(buf)
			step := uint32(0)
			for mask := 1; mask < n; mask <<= 1 {
				switch {
				case v < mask && v+mask < n:
					if err := o.send(ctx, real(v+mask), step, b); err != nil {
						return err
					}
				case v >= mask && v < 2*mask:
					if err := o.recv(ctx, real(v-mask), step, b); err != nil {
						return err
					}
				}
				step++
			}
			return nil
		}
		seg := max(c.cfg.SegmentBytes/4, 16)
		nseg := (len(buf) + seg - 1) / seg
		var sendErr error
		var wg sync.WaitGroup
		jobs := make(chan int, nseg)
		if v+1 < n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := range jobs {
					if sendErr != nil {
						continue
					}
					lo, hi := k*seg, min((k+1)*seg, len(buf))
					sendErr = o.send(ctx, real(v+1), uint32(k), f32bytes(buf[lo:hi]))
				}
			}()
		}
		var recvErr error
		for k := range nseg {
			if v > 0 {
				lo, hi := k*seg, min((k+1)*seg, len(buf))
				if recvErr = o.recv(ctx, real(v-1), uint32(k), f32bytes(buf[lo:hi])); recvErr != nil {
					break
				}
			}
			if v+1 < n {
				jobs <- k
			}
		}
		close(jobs)
		wg.Wait()
		if recvErr != nil {
			return recvErr
		}
		return sendErr
	}, nil
}

// AllToAll sends block j of send (len(send)/Size() elements) to member j and
// receives member j's block Rank() into block j of recv. send and recv must
// not overlap. recv is the operation's until it returns (the transport may
// use it as scratch); if it fails, recv is zeroed.
func (c *Comm) AllToAll(ctx context.Context, send, recv []float32) error {
	if err := c.checkAllToAll(send, recv); err != nil {
		return err
	}
	// The counts on the stack: with few ranks an all-to-all on the progress
	// engine allocates nothing (run's closure does not escape).
	if groups, of, ok := c.groupsByHost(); ok {
		o := c.begin(OpAllToAll, len(send))
		return o.run(ctx, func(ctx context.Context) error {
			return allToAllHier(ctx, &o, send, recv, len(send)/len(c.ranks), groups, of)
		})
	}
	var cbuf [stackRanks]int
	counts := uniformCounts(cbuf[:0], len(c.ranks), len(send))
	o := c.begin(OpAllToAll, len(send))
	return o.run(ctx, func(ctx context.Context) error { return allToAllV(ctx, &o, send, counts, recv, counts, false) })
}

// AllToAllAsync starts AllToAll.
func (c *Comm) AllToAllAsync(send, recv []float32) *Request {
	if err := c.checkAllToAll(send, recv); err != nil {
		return failedRequest(err)
	}
	o := c.begin(OpAllToAll, len(send))
	if groups, of, ok := c.groupsByHost(); ok {
		return o.async(func(ctx context.Context) error {
			return allToAllHier(ctx, &o, send, recv, len(send)/len(c.ranks), groups, of)
		})
	}
	counts := uniformCounts(nil, len(c.ranks), len(send))
	return o.async(func(ctx context.Context) error {
		return allToAllV(ctx, &o, send, counts, recv, counts, false)
	})
}

func (c *Comm) checkAllToAll(send, recv []float32) error {
	n := len(c.ranks)
	if len(send) != len(recv) || len(send)%n != 0 {
		return fmt.Errorf("collective: alltoall on %s: send %d and recv %d elements must be equal and divisible by %d", c.name, len(send), len(recv), n)
	}
	return nil
}

// uniformCounts appends n counts of total/n to dst.
func uniformCounts(dst []int, n, total int) []int {
	for range n {
		dst = append(dst, total/n)
	}
	return dst
}

// stackRanks: groups of at most this many ranks keep an all-to-all's
// per-peer bookkeeping in arrays on the stack.
const stackRanks = 16

// AllToAllV sends sendCounts[j] elements (consecutive blocks of send, in rank
// order) to member j and receives recvCounts[j] elements from member j into
// consecutive blocks of recv. Zero counts are allowed. Each pair of members
// must agree (my sendCounts[j] == member j's recvCounts[me]); a mismatch is a
// *DesyncError on the receiver. As with AllToAll, send and recv must not
// overlap, and recv is zeroed if the operation fails.
func (c *Comm) AllToAllV(ctx context.Context, send []float32, sendCounts []int, recv []float32, recvCounts []int) error {
	if err := c.checkAllToAllV(send, sendCounts, recv, recvCounts); err != nil {
		return err
	}
	o := c.begin(OpAllToAllV, 0)
	return o.run(ctx, func(ctx context.Context) error {
		return allToAllV(ctx, &o, send, sendCounts, recv, recvCounts, true)
	})
}

// AllToAllVAsync starts AllToAllV.
func (c *Comm) AllToAllVAsync(send []float32, sendCounts []int, recv []float32, recvCounts []int) *Request {
	if err := c.checkAllToAllV(send, sendCounts, recv, recvCounts); err != nil {
		return failedRequest(err)
	}
	sc := append([]int(nil), sendCounts...)
	rc := append([]int(nil), recvCounts...)
	o := c.begin(OpAllToAllV, 0)
	return o.async(func(ctx context.Context) error {
		return allToAllV(ctx, &o, send, sc, recv, rc, true)
	})
}

func (c *Comm) checkAllToAllV(send []float32, sendCounts []int, recv []float32, recvCounts []int) error {
	n := len(c.ranks)
	if err := checkCounts("sendCounts", sendCounts, n, len(send)); err != nil {
		return fmt.Errorf("collective: alltoallv on %s: %w", c.name, err)
	}
	if err := checkCounts("recvCounts", recvCounts, n, len(recv)); err != nil {
		return fmt.Errorf("collective: alltoallv on %s: %w", c.name, err)
	}
	return nil
}

func checkCounts(what string, counts []int, n, have int) error {
	if len(counts) != n {
		return fmt.Errorf("%s has %d entries, want %d", what, len(counts), n)
	}
	sum := 0
	for i, k := range counts {
		if k < 0 {
			return fmt.Errorf("%s[%d] = %d is negative", what, i, k)
		}
		sum += k
	}
	if sum != have {
		return fmt.Errorf("%s sum to %d, buffer has %d elements", what, sum, have)
	}
	return nil
}

// a2aInlineBytes: all-to-alls sending at most this much are sent from the
// calling goroutine (a goroutine per peer costs more than it overlaps).
const a2aInlineBytes = 256 << 10

// allToAllV posts every receive at once (payloads land in place), then sends
// to every peer concurrently.
// perMessage puts each message's element count in its header (so count
// mismatches are named); otherwise the header carries the op's total.
func allToAllV(ctx context.Context, o *opRun, send []float32, sc []int, recv []float32, rc []int, perMessage bool) error {
	n, r := len(o.c.ranks), o.c.rank
	// Send and receive offsets; on the stack for small groups.
	var obuf [2 * (stackRanks + 1)]int
	var off []int
	if n <= stackRanks {
		off = obuf[:2*(n+1)]
	} else {
		off = make([]int, 2*(n+1))
	}
	soff, roff := off[:n+1], off[n+1:]
	for i := range n {
		soff[i+1] = soff[i] + sc[i]
		roff[i+1] = roff[i] + rc[i]
	}
	if sc[r] != rc[r] {
		return fmt.Errorf("this rank sends itself %d elements but expects %d", sc[r], rc[r])
	}
	if n == 1 {
		copy(recv[roff[r]:roff[r+1]], send[soff[r]:soff[r+1]])
		return nil
	}
	if ss := asyncSender(o.c.t); ss != nil {
		return allToAllVQueued(ctx, o, ss, send, sc, soff, recv, rc, roff, perMessage)
	}
	return allToAllVBlocking(ctx, o, send, sc, slices.Clone(soff), recv, rc, roff, perMessage)
}

// allToAllVBlocking is allToAllV over a transport whose sends block: small
// messages are sent in turn from this goroutine, large ones from a
// goroutine per peer. The goroutines hold neither o nor the caller's
// slices, which may live on the caller's stack.
func allToAllVBlocking(ctx context.Context, o *opRun, send []float32, sc, soff []int, recv []float32, rc, roff []int, perMessage bool) error {
	n, r := len(o.c.ranks), o.c.rank
	pend := make([]Pending, n)
	postReceives(o, pend, recv, rc, roff, perMessage)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	t, ranks := o.c.t, o.c.ranks
	headers := make([]Header, n)
	for p := range n {
		headers[p] = a2aHeader(o, sc[p], perMessage)
	}
	sendErrs := make([]error, n)
	sendTo := func(p int) {
		if err := t.Send(ctx, ranks[p], headers[p], f32bytes(send[soff[p]:soff[p+1]])); err != nil {
			sendErrs[p] = fmt.Errorf("send to rank %d: %w", ranks[p], err)
			cancel()
		}
	}
	var wg sync.WaitGroup
	if 4*(len(send)-sc[r]) <= a2aInlineBytes {
		// Small: the socket buffers take it all at once, in order.
		for s := 1; s < n; s++ {
			sendTo(mod(r+s, n))
		}
	} else {
		// Large: send to every peer at once, so whichever socket can take
		// data gets it instead of one slow receiver stalling the rest.
		for s := 1; s < n; s++ {
			p := mod(r+s, n)
			wg.Add(1)
			go func() {
				defer wg.Done()
				sendTo(p)
			}()
		}
	}
	// This rank's own block is copied while the peers' blocks are in flight.
	copy(recv[roff[r]:roff[r+1]], send[soff[r]:soff[r+1]])
	first := awaitReceives(ctx, o, pend, cancel)
	wg.Wait()
	for _, err := range sendErrs {
		first = rootCause(first, err)
	}
	if first != nil {
		clear(recv) // as allToAllVQueued does
	}
	return first
}

// allToAllVQueued is allToAllV over a transport with queued sends: this
// goroutine moves every frame while it waits, and nothing is allocated per
// peer but the frames and receives themselves.
func allToAllVQueued(ctx context.Context, o *opRun, ss sendStarter, send []float32, sc, soff []int, recv []float32, rc, roff []int, perMessage bool) error {
	n, r := len(o.c.ranks), o.c.rank
	// Receives by source, then sends by destination; on the stack for
	// small groups.
	var pbuf [2 * stackRanks]Pending
	var pend []Pending
	if n <= stackRanks {
		pend = pbuf[:2*n]
	} else {
		pend = make([]Pending, 2*n)
	}
	recvs, sends := pend[:n], pend[n:]
	postReceives(o, recvs, recv, rc, roff, perMessage)
	for s := 1; s < n; s++ {
		p := mod(r+s, n)
		sends[p] = ss.startSend(o.c.ranks[p], a2aHeader(o, sc[p], perMessage), f32bytes(send[soff[p]:soff[p+1]]))
	}
	// This rank's own block is copied while the peers' blocks are in flight,
	// in pieces between which the sockets are served.
	self, selfOut := send[soff[r]:soff[r+1]], recv[roff[r]:roff[r+1]]
	inPieces(ss, len(self), func(lo, hi int) { copy(selfOut[lo:hi], self[lo:hi]) })
	first := awaitReceives(ctx, o, recvs, nil)
	var sendErr error
	for s := 1; s < n; s++ {
		p := mod(r+s, n)
		// Under ctx even after a failed receive: ctx is the operation's own,
		// and a frame withdrawn half written would cut a healthy link.
		if _, err := sends[p].Wait(ctx); err != nil && sendErr == nil {
			sendErr = fmt.Errorf("send to rank %d: %w", o.c.ranks[p], err)
		}
	}
	// Every receive and send has been waited on: their objects go back to
	// the transport, so that the next operation allocates none.
	for s := 1; s < n; s++ {
		release(recvs[mod(r-s, n)])
		release(sends[mod(r+s, n)])
	}
	err := rootCause(first, sendErr)
	if err != nil {
		// Receives are scratch: a failed one may hold another frame's
		// bytes. Zeros are what a caller that reads on (the MoE layer
		// turns received floats into row counts) can live with.
		clear(recv)
	}
	return err
}

// postReceives posts an all-to-all's receives into recvs (by source; this
// rank's own entry is left alone), each into its block of recv.
func postReceives(o *opRun, recvs []Pending, recv []float32, rc, roff []int, perMessage bool) {
	n, r := len(o.c.ranks), o.c.rank
	// recv is the all-to-all's own until it returns (it must not overlap
	// send): its blocks are scratch.
	sp, scratch := o.c.t.(scratchPoster)
	for s := 1; s < n; s++ {
		p := mod(r-s, n)
		h, dst := a2aHeader(o, rc[p], perMessage), f32bytes(recv[roff[p]:roff[p+1]])
		if scratch {
			recvs[p] = sp.postScratch(o.c.ranks[p], h, dst)
		} else {
			recvs[p] = o.c.t.Post(o.c.ranks[p], h, dst)
		}
	}
}

// a2aHeader is the header of an all-to-all message of count elements:
// perMessage puts the count in it, otherwise it carries the op's total.
func a2aHeader(o *opRun, count int, perMessage bool) Header {
	h := o.header(0)
	if perMessage {
		h.Count = uint64(count)
	}
	return h
}

// rootCause is the error to report of first and a later err: the first,
// unless it is only the cancellation that err caused.
func rootCause(first, err error) error {
	if err != nil && (first == nil || (isCtxErr(first) && !isCtxErr(err))) {
		return err
	}
	return first
}

// awaitReceives waits for an all-to-all's receives (recvs by source, this
// rank's own entry unused), nearest source first. After the first failure
// it calls onFail (if not nil) and withdraws the rest; it returns that
// failure.
func awaitReceives(ctx context.Context, o *opRun, recvs []Pending, onFail context.CancelFunc) error {
	n, r := len(o.c.ranks), o.c.rank
	var first error
	for s := 1; s < n; s++ {
		p := mod(r-s, n)
		if first != nil {
			o.withdraw(recvs[p])
			continue
		}
		if _, err := recvs[p].Wait(ctx); err != nil {
			first = fmt.Errorf("receive from rank %d: %w", o.c.ranks[p], err)
			if onFail != nil {
				onFail()
			}
		}
	}
	return first
}
