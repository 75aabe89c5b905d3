package collective

import (
	"context"
	"fmt"
	"sync"
)

// ringSpec describes one ring reduce-scatter and/or all-gather over chunks
// laid out at off[j] with length ln[j] (chunk j ends up owned by rank j).
//
// Reduce-scatter, rank r, step s = 0..n-2: send chunk r-s-1 to the next rank,
// receive chunk r-s-2 from the previous one and add the local contribution;
// after the last step chunk r holds the full reduction. All-gather, step s:
// send chunk r-s, receive chunk r-s-1 (into place). Chunks move in segments;
// a segment is forwarded as soon as it is reduced, so reduction, sending and
// receiving overlap, and the all-gather of early segments starts while late
// segments are still being reduced. Every chunk is reduced in one fixed order
// (starting at its owner's successor), so the result is independent of timing
// and, being computed once and then copied, identical on every rank.
type ringSpec struct {
	doRS, doAG bool
	src        []float32 // reduce-scatter contributions, n chunks
	inPlace    bool      // partial sums are stored into src (all-reduce) instead of temporaries
	out        []float32 // reduce-scatter result: chunk r (len ln[r]); may alias src's chunk r
	ag         []float32 // all-gather buffer, n chunks; chunk r must hold this rank's data (or be out)
	divisor    float32   // if non-zero, the reduced chunk is divided by it (mean)
	off, ln    []int
	seg        int // elements per segment
}

func mod(a, n int) int { return ((a % n) + n) % n }

func (sp *ringSpec) nseg(j int) int { return (sp.ln[j] + sp.seg - 1) / sp.seg }

func (sp *ringSpec) segRange(j, k int) (lo, hi int) {
	lo = sp.off[j] + k*sp.seg
	hi = min(lo+sp.seg, sp.off[j]+sp.ln[j])
	return
}

type sendJob struct {
	data    []float32
	release []float32 // temporary to return to the free list once sent
}

// ringMsg is one frame expected from the previous rank.
type ringMsg struct {
	ag      bool
	s, j, k int // step, chunk, segment
	lo, hi  int
}

// ringPoolBytes bounds the reduce-scatter temporaries, and so how far ahead
// receives are posted (frames beyond it are buffered by the transport):
// ringPoolBytes worth of segments, at least 4 and at most 16, per ring in
// flight (16 with the default 256 KiB segments: 4 MiB). Reduction keeps
// ahead of the transfer, so a few segments of look-ahead are enough
// (docs/decisions.md#two-ranks-take-the-ring).
const ringPoolBytes = 8 << 20

func ringPool(segElems int) int { return min(max(ringPoolBytes/(4*segElems), 4), 16) }

// runRing executes sp on o's communicator. Receives are posted ahead, so
// payloads land in place (all-gather) or in temporaries (reduce-scatter)
// without an extra copy; a sender goroutine forwards segments as soon as
// they are ready. It returns only when nothing it started still touches the
// buffers.
func runRing(ctx context.Context, o *opRun, sp *ringSpec) error {
	c := o.c
	n, r := len(c.ranks), c.rank
	next, prev := mod(r+1, n), mod(r-1, n)
	// Queued sends are waited for under the operation's deadline even after
	// a failure cancelled ctx: withdrawing a frame half written would cut
	// a healthy link.
	opCtx := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var mu sync.Mutex
	var firstErr error
	setErr := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
		cancel()
	}

	var msgs []ringMsg
	if sp.doRS {
		for s := 0; s < n-1; s++ {
			j := mod(r-s-2, n)
			for k := range sp.nseg(j) {
				lo, hi := sp.segRange(j, k)
				msgs = append(msgs, ringMsg{s: s, j: j, k: k, lo: lo, hi: hi})
			}
		}
	}
	if sp.doAG {
		for s := 0; s < n-1; s++ {
			j := mod(r-s-1, n)
			for k := range sp.nseg(j) {
				lo, hi := sp.segRange(j, k)
				msgs = append(msgs, ringMsg{ag: true, s: s, j: j, k: k, lo: lo, hi: hi})
			}
		}
	}
	// Temporaries: as many as look-ahead allows, but no more than there are
	// reduce-scatter messages, each as long as the longest of them (a small
	// buffer needs one short temporary, not the pool's worth of segments).
	pool, tmpLen, nrs := ringPool(sp.seg), 0, 0
	for _, m := range msgs {
		if !m.ag {
			nrs++
			tmpLen = max(tmpLen, m.hi-m.lo)
		}
	}
	pool = max(1, min(pool, nrs))
	free := make(chan []float32, pool)
	var owned [][]float32
	if sp.doRS {
		for range pool {
			t := getF32(tmpLen)
			owned = append(owned, t)
			free <- t
		}
	}

	jobs := make(chan sendJob, 64)
	var wg sync.WaitGroup
	// With queued sends (sendStarter) this goroutine moves every frame
	// itself while it waits, and a temporary returns to free when the send
	// that reads it has finished; otherwise a sender goroutine writes.
	ss := asyncSender(c.t)
	type inflight struct {
		pd      Pending
		release []float32
	}
	var sent []inflight
	var sendStep uint32
	// reap collects finished sends from the front; with block it waits for
	// sends until one returns a temporary (or none is left to).
	reap := func(block bool) {
		for len(sent) > 0 {
			f := sent[0]
			if !block && !sendDone(f.pd) {
				return
			}
			if _, err := f.pd.Wait(opCtx); err != nil {
				setErr(fmt.Errorf("send to rank %d: %w", c.ranks[next], err))
			}
			release(f.pd)
			sent = sent[1:]
			if f.release != nil {
				free <- f.release
				if block {
					return
				}
			}
		}
	}
	if ss == nil {
		oc := *o // the goroutine holds a copy: o may live on the caller's stack
		wg.Add(1)
		go func() {
			defer wg.Done()
			var step uint32
			for jb := range jobs {
				if ctx.Err() == nil {
					if err := oc.send(ctx, next, step, f32bytes(jb.data)); err != nil {
						setErr(err)
					}
				}
				step++
				if jb.release != nil {
					free <- jb.release
				}
			}
		}()
	}

	pend := make([]Pending, len(msgs))
	tmps := make([][]float32, len(msgs))
	posted, waited := 0, 0
	post := func(i int, tmp []float32) {
		m := msgs[i]
		var dst []float32
		if m.ag {
			dst = sp.ag[m.lo:m.hi]
		} else {
			tmps[i] = tmp[:m.hi-m.lo]
			dst = tmps[i]
		}
		pend[i] = c.t.Post(c.ranks[prev], o.header(uint32(i)), f32bytes(dst))
	}
	// postAhead posts in order as far as temporaries allow, without blocking.
	postAhead := func() {
		for posted < len(msgs) {
			if msgs[posted].ag {
				post(posted, nil)
			} else {
				select {
				case t := <-free:
					post(posted, t)
				default:
					return
				}
			}
			posted++
		}
	}
	queue := func(jb sendJob) bool {
		if ss != nil {
			if ctx.Err() != nil {
				return false
			}
			pd := ss.startSend(c.ranks[next], o.header(sendStep), f32bytes(jb.data))
			sendStep++
			sent = append(sent, inflight{pd: pd, release: jb.release})
			reap(false)
			return true
		}
		select {
		case jobs <- jb:
			return true
		case <-ctx.Done():
			return false
		}
	}

	func() {
		if ss == nil {
			defer close(jobs)
		}
		// Reduce-scatter step 0 (or the all-gather's first step) sends local data.
		first, data := mod(r-1, n), sp.src
		if !sp.doRS {
			first, data = r, sp.ag
		}
		postAhead()
		for k := range sp.nseg(first) {
			lo, hi := sp.segRange(first, k)
			if !queue(sendJob{data: data[lo:hi]}) {
				return
			}
		}
		for i, m := range msgs {
			if posted == i { // out of temporaries: wait for one
				if ss != nil && len(free) == 0 {
					reap(true)
				}
				select {
				case t := <-free:
					post(i, t)
					posted++
				case <-ctx.Done():
					return
				}
			}
			postAhead()
			_, err := pend[i].Wait(ctx)
			release(pend[i])
			waited = i + 1
			if err != nil {
				setErr(fmt.Errorf("receive from rank %d: %w", c.ranks[prev], err))
				return
			}
			if m.ag {
				if m.s < n-2 && !queue(sendJob{data: sp.ag[m.lo:m.hi]}) {
					return
				}
				continue
			}
			tmp := tmps[i]
			if m.s == n-2 { // chunk r complete
				dst := sp.out[m.lo-sp.off[r] : m.hi-sp.off[r]]
				addPieces(ss, dst, sp.src[m.lo:m.hi], tmp)
				free <- tmp[:cap(tmp)]
				if sp.divisor != 0 {
					divide(dst, sp.divisor)
				}
				if sp.doAG && !queue(sendJob{data: dst}) {
					return
				}
				continue
			}
			if sp.inPlace {
				addPieces(ss, sp.src[m.lo:m.hi], sp.src[m.lo:m.hi], tmp)
				free <- tmp[:cap(tmp)]
				if !queue(sendJob{data: sp.src[m.lo:m.hi]}) {
					return
				}
			} else {
				addPieces(ss, tmp, sp.src[m.lo:m.hi], tmp)
				if !queue(sendJob{data: tmp, release: tmp[:cap(tmp)]}) {
					return
				}
			}
		}
	}()
	wg.Wait()
	for _, f := range sent {
		if _, err := f.pd.Wait(opCtx); err != nil {
			setErr(fmt.Errorf("send to rank %d: %w", c.ranks[next], err))
		}
		release(f.pd)
	}
	// Withdraw receives that were posted but not completed.
	if waited < posted {
		done, stop := context.WithCancel(context.Background())
		stop()
		for i := waited; i < posted; i++ {
			_, _ = pend[i].Wait(done)
			release(pend[i])
		}
	}
	for _, t := range owned {
		putF32(t)
	}
	mu.Lock()
	defer mu.Unlock()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

// addPieces is addTo(dst, a, b) in pieces between which ss's sockets are
// served (see inPieces).
func addPieces(ss sendStarter, dst, a, b []float32) {
	inPieces(ss, len(dst), func(lo, hi int) { addTo(dst[lo:hi], a[lo:hi], b[lo:hi]) })
}

// equalChunks splits count elements into n chunks differing by at most one.
func equalChunks(count, n int) (off, ln []int) {
	off = make([]int, n)
	ln = make([]int, n)
	base, rem := count/n, count%n
	p := 0
	for j := range n {
		off[j] = p
		ln[j] = base
		if j < rem {
			ln[j]++
		}
		p += ln[j]
	}
	return
}

// fixedChunks: n chunks of m elements each.
func fixedChunks(m, n int) (off, ln []int) {
	off = make([]int, n)
	ln = make([]int, n)
	for j := range n {
		off[j] = j * m
		ln[j] = m
	}
	return
}
