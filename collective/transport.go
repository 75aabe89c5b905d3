package collective

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"unsafe"
)

// Transport sends and receives tagged frames between the ranks 0..Size()-1 of
// a job. Communicators and collectives are built on it.
//
// Contract (every implementation):
//   - Send delivers one frame to peer (peer != Rank()). The payload is the
//     concatenation of parts; the transport does not keep parts after Send
//     returns, so the caller may reuse them. Send blocks at most until ctx is
//     done. Safe for concurrent use; each frame is delivered whole.
//   - Recv waits for the frame from peer whose tag equals want.Tag and places
//     its payload in dst. The frame must agree with want on Op and Count and
//     carry exactly len(dst) bytes, otherwise Recv returns a *DesyncError.
//     Frames arrive in any order relative to receives: an early frame is kept
//     until its Recv, a receive posted early gets the payload written straight
//     into dst. At most one Recv may wait on one (peer, tag). If Recv returns
//     early because ctx is done, the transport has let go of dst. Recv
//     returns the frame's header (Len and Time as sent).
//   - Post is Recv split in two: it registers the receive and returns at once;
//     Pending.Wait completes it. Recv(ctx, ...) == Post(...).Wait(ctx).
//   - A frame with Op == OpAbort fails every current and later Recv whose tag
//     has the same (Group, Seq), from any peer, with an *AbortError.
//   - A failed link or dead peer fails the receives from that peer (frames
//     that arrived before the failure are still delivered) with a *PeerError.
//   - Close releases resources and fails waiting receives; it is idempotent.
type Transport interface {
	Rank() int
	Size() int
	Send(ctx context.Context, peer int, h Header, parts ...[]byte) error
	Recv(ctx context.Context, peer int, want Header, dst []byte) (Header, error)
	Post(peer int, want Header, dst []byte) Pending
	Close() error
}

// sendStarter is implemented by transports that can queue a frame and
// finish writing it later (TCP with the progress engine). One goroutine can
// then keep sends and receives in flight and move them all while it waits,
// where otherwise a sender goroutine per destination would block in Send.
type sendStarter interface {
	// asyncSends reports whether startSend may be used (it may depend on
	// the transport's configuration).
	asyncSends() bool
	// startSend queues the frame and returns at once. Wait on the Pending
	// returns once the frame is written or has failed; payload must not
	// change before. Every such Pending must be waited on. (One payload,
	// not variadic parts: a variadic slice passed through an interface
	// method is a heap allocation per frame.)
	startSend(peer int, h Header, payload []byte) Pending
	// progress moves bytes once without blocking, if nobody else is: called
	// between pieces of computation, it keeps sockets busy meanwhile.
	progress()
}

// progressEvery is how much work (elements copied or reduced) a goroutine
// with queued sends does between calls to progress: 64 Ki floats take about
// 10 µs to add, about what a socket buffer drains in that time.
const progressEvery = 64 << 10

// scratchPoster is implemented by transports that can post a receive whose
// buffer is scratch until the receive completes: nothing reads it, so the
// transport may put other bytes there meanwhile (and leaves it unspecified
// if the receive fails). Receives into memory that queued sends may still
// read must use Post.
type scratchPoster interface {
	postScratch(peer int, want Header, dst []byte) Pending
}

// inPieces calls fn on [lo, hi) pieces of [0, n) of at most progressEvery
// elements, calling ss.progress between them (ss may be nil: one piece).
func inPieces(ss sendStarter, n int, fn func(lo, hi int)) {
	if ss == nil || n <= progressEvery {
		fn(0, n)
		return
	}
	for lo := 0; lo < n; lo += progressEvery {
		if lo > 0 {
			ss.progress()
		}
		fn(lo, min(lo+progressEvery, n))
	}
}

// asyncSender returns t's sendStarter when it supports queued sends now.
func asyncSender(t Transport) sendStarter {
	if s, ok := t.(sendStarter); ok && s.asyncSends() {
		return s
	}
	return nil
}

// sendDone reports without blocking whether a started send has finished.
func sendDone(p Pending) bool {
	if d, ok := p.(interface{ done() bool }); ok {
		return d.done()
	}
	return true // failed at start
}

// Pending is a receive posted ahead of time with Transport.Post: a frame that
// arrives after the post is written straight into dst. Every Pending must be
// waited on; Wait with an ended ctx withdraws the receive (after which the
// transport no longer touches dst).
type Pending interface {
	Wait(ctx context.Context) (Header, error)
}

// DesyncError reports a frame that does not match what this rank expected:
// the ranks called different collectives, or the same one with different sizes.
type DesyncError struct {
	Peer      int
	Want, Got Header
}

func (e *DesyncError) Error() string {
	return fmt.Sprintf("desynchronised with rank %d: it sent %v, this rank expected %v", e.Peer, e.Got, e.Want)
}

// PeerError reports a peer that cannot be reached any more.
type PeerError struct {
	Peer int
	Err  error
}

func (e *PeerError) Error() string { return fmt.Sprintf("rank %d unreachable: %v", e.Peer, e.Err) }
func (e *PeerError) Unwrap() error { return e.Err }

// AbortError reports that a peer gave up on an operation and told the others.
type AbortError struct {
	Peer   int
	Reason string
}

func (e *AbortError) Error() string {
	return fmt.Sprintf("rank %d aborted the operation: %s", e.Peer, e.Reason)
}

// BufferLimitError reports a peer that sent more than this rank keeps for
// one peer ahead of its receives (TCPConfig.MaxBuffered): frames that arrive
// before their receive, each counted as its payload plus earlyOverhead, and
// abort reasons, which are kept for the transport's life. The peer's link
// fails with it instead of this rank allocating what the peer asks for
// (docs/collectives.md#safety-contract).
type BufferLimitError struct {
	Peer  int
	Held  uint64 // bytes charged to the peer already
	Frame uint64 // the payload of the frame that did not fit
	Limit uint64
}

func (e *BufferLimitError) Error() string {
	return fmt.Sprintf("rank %d sent more than this rank buffers for one peer ahead of its receives: %d bytes held, a frame of %d more, limit %d",
		e.Peer, e.Held, e.Frame, e.Limit)
}

// ErrClosed is returned by operations on a closed transport.
var ErrClosed = errors.New("transport closed")

func f32bytes(x []float32) []byte {
	if len(x) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(x))), len(x)*4)
}

type mkey struct {
	peer int
	tag  Tag
}

type opKey struct{ group, seq uint64 }

// pkey identifies one operation's traffic with one peer, whatever the step.
type pkey struct {
	peer       int
	group, seq uint64
}

func prefix(k mkey) pkey { return pkey{k.peer, k.tag.Group, k.tag.Seq} }

// psig remembers the op of the frames and receives pending for one pkey, so
// that a peer in another collective is caught even when its messages carry
// steps this rank never receives.
type psig struct {
	h Header
	n int
}

type waiter struct {
	peer int
	want Header
	dst  []byte
	// scratch: nothing reads dst until the receive completes, so a reader
	// may put another frame's bytes there before it has read the header
	// (readSpeculative). An all-to-all's receive buffer is scratch; a ring
	// posts receives over memory its queued sends still read, which is not.
	scratch bool
	done    signal
	err     error
	got     Header
	claimed bool // a reader is writing into dst; only it may complete the waiter
}

type arrival struct {
	h       Header
	payload []byte
}

// inbox matches incoming frames with receives. Every transport has one.
type inbox struct {
	mu      sync.Mutex
	waiting map[mkey]*waiter
	byPeer  [][]*waiter // waiting by peer, oldest first
	arrived map[mkey]arrival
	sigs    map[pkey]psig
	aborted map[opKey]error
	peerErr map[int]error
	free    []*pending // released receives, for post to reuse
	closed  error
	// What each peer's frames without a receive cost this rank (frameCost):
	// early[p] for frames kept in arrived or being read for it (refunded
	// when they leave), kept[p] for abort reasons (kept as long as
	// aborted). maxEarly (0: no bound, as on in-process links) bounds
	// early[p] + kept[p].
	maxEarly    uint64
	early, kept []uint64
	// breakLink is called (without mu) when a receive gives up while a reader
	// is writing into its buffer: the link must fail so the reader lets go.
	breakLink func(peer int, err error)
}

func newInbox() *inbox {
	return &inbox{
		waiting: make(map[mkey]*waiter),
		arrived: make(map[mkey]arrival),
		sigs:    make(map[pkey]psig),
		aborted: make(map[opKey]error),
		peerErr: make(map[int]error),
	}
}

// earlyOverhead is what one frame kept before its receive costs beyond its
// payload (map entries, header, bookkeeping), charged with the payload so
// that empty frames cannot fill memory either.
const earlyOverhead = 256

// frameCost is what keeping a frame of n payload bytes costs: the buffer
// getBuf returns for it (a power-of-two size class) and earlyOverhead.
func frameCost(n uint64) uint64 {
	if n > 1<<maxBufClass {
		return n + earlyOverhead
	}
	if n == 0 {
		return earlyOverhead
	}
	return 1<<bufClass(int(n)) + earlyOverhead
}

// chargeLocked charges peer for a frame of n payload bytes that has no
// receive (keep: an abort reason, never refunded), or returns a
// *BufferLimitError and charges nothing. Callers hold mu.
func (b *inbox) chargeLocked(peer int, n uint64, keep bool) error {
	for len(b.early) <= peer {
		b.early, b.kept = append(b.early, 0), append(b.kept, 0)
	}
	held := b.early[peer] + b.kept[peer]
	c := frameCost(n)
	if b.maxEarly > 0 && (c > b.maxEarly || c > b.maxEarly-held) {
		return &BufferLimitError{Peer: peer, Held: held, Frame: n, Limit: b.maxEarly}
	}
	if keep {
		b.kept[peer] += c
	} else {
		b.early[peer] += c
	}
	return nil
}

// refundLocked takes back the charge of a frame of n payload bytes that
// left the inbox (received, dropped or given up). Callers hold mu.
func (b *inbox) refundLocked(peer int, n uint64) {
	if peer < len(b.early) {
		b.early[peer] -= min(b.early[peer], frameCost(n))
	}
}

// charge is chargeLocked for callers that do not hold mu.
func (b *inbox) charge(peer int, n uint64, keep bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.chargeLocked(peer, n, keep)
}

// refund is refundLocked for callers that do not hold mu.
func (b *inbox) refund(peer int, n uint64) {
	b.mu.Lock()
	b.refundLocked(peer, n)
	b.mu.Unlock()
}

func checkFrame(peer int, want, got Header, dstLen int) error {
	if got.Op != want.Op || got.Count != want.Count || got.Tag != want.Tag || got.Len != uint64(dstLen) {
		w := want
		w.Len = uint64(dstLen)
		return &DesyncError{Peer: peer, Want: w, Got: got}
	}
	return nil
}

// Bookkeeping of the maps; callers hold mu.

func (b *inbox) sigAdd(k mkey, h Header) {
	pk := prefix(k)
	if s, ok := b.sigs[pk]; ok {
		s.n++
		b.sigs[pk] = s
		return
	}
	b.sigs[pk] = psig{h: h, n: 1}
}

func (b *inbox) sigDel(k mkey) {
	pk := prefix(k)
	if s, ok := b.sigs[pk]; ok {
		s.n--
		if s.n <= 0 {
			delete(b.sigs, pk)
		} else {
			b.sigs[pk] = s
		}
	}
}

func (b *inbox) putW(k mkey, w *waiter) {
	b.waiting[k] = w
	b.sigAdd(k, w.want)
	for len(b.byPeer) <= k.peer {
		b.byPeer = append(b.byPeer, nil)
	}
	b.byPeer[k.peer] = append(b.byPeer[k.peer], w)
}

func (b *inbox) delW(k mkey) {
	delete(b.waiting, k)
	b.sigDel(k)
	if k.peer < len(b.byPeer) {
		ws := b.byPeer[k.peer]
		for i, w := range ws {
			if w.want.Tag == k.tag {
				b.byPeer[k.peer] = slices.Delete(ws, i, i+1)
				break
			}
		}
	}
}
func (b *inbox) putA(k mkey, a arrival) { b.arrived[k] = a; b.sigAdd(k, a.h) }
func (b *inbox) delA(k mkey)            { delete(b.arrived, k); b.sigDel(k) }

// complete finishes an unclaimed waiter; callers hold mu and removed it.
func (w *waiter) complete(err error) {
	w.err = err
	w.done.fire()
}

// pending is a receive posted on an inbox.
type pending struct {
	b    *inbox
	key  mkey
	w    *waiter // nil when the result was known at post time; else &ws
	ws   waiter  // one allocation for both
	h    Header
	err  error
	want Op
	// inFree: released and on the inbox's free list (guarded by its mu); a
	// second release is ignored.
	inFree bool
	// await, when set, blocks until done fires or ctx ends (nil or ctx's
	// error) while moving the transport's bytes: the TCP progress engine's
	// waiters do the I/O themselves.
	await func(ctx context.Context, done *signal) error
}

// post registers a receive (or completes it at once from an early frame).
func (b *inbox) post(peer int, want Header, dst []byte) *pending {
	return b.postOpts(peer, want, dst, false)
}

// postOpts is post; scratch marks dst as a waiter's scratch field says.
func (b *inbox) postOpts(peer int, want Header, dst []byte, scratch bool) *pending {
	key := mkey{peer, want.Tag}
	b.mu.Lock()
	p := b.newPending()
	p.key, p.want = key, want.Op
	if b.closed != nil {
		b.mu.Unlock()
		p.err = b.closed
		return p
	}
	if err := b.aborted[opKey{want.Tag.Group, want.Tag.Seq}]; err != nil {
		b.mu.Unlock()
		p.err = err
		return p
	}
	if a, ok := b.arrived[key]; ok {
		b.delA(key)
		b.refundLocked(peer, a.h.Len)
		b.mu.Unlock()
		p.h = a.h
		if p.err = checkFrame(peer, want, a.h, len(dst)); p.err == nil {
			copy(dst, a.payload)
		}
		putBuf(a.payload)
		return p
	}
	if s, ok := b.sigs[prefix(key)]; ok && s.h.Op != want.Op {
		b.mu.Unlock()
		w := want
		w.Len = uint64(len(dst))
		p.h, p.err = s.h, &DesyncError{Peer: peer, Want: w, Got: s.h}
		return p
	}
	if err := b.peerErr[peer]; err != nil {
		b.mu.Unlock()
		p.err = err
		return p
	}
	if _, dup := b.waiting[key]; dup {
		b.mu.Unlock()
		p.err = fmt.Errorf("second receive posted for %v from rank %d", want.Tag, peer)
		return p
	}
	p.ws.peer, p.ws.want, p.ws.dst, p.ws.scratch = peer, want, dst, scratch
	p.w = &p.ws
	b.putW(key, p.w)
	b.mu.Unlock()
	return p
}

// keepPendings bounds an inbox's free list of receives.
const keepPendings = 64

// newPending returns a cleared receive, recycled if one is free; callers
// hold mu.
func (b *inbox) newPending() *pending {
	if k := len(b.free); k > 0 {
		p := b.free[k-1]
		b.free = b.free[:k-1]
		p.inFree = false
		return p
	}
	p := &pending{b: b}
	p.ws.done.init()
	return p
}

// release hands p back for reuse by a later post. Only an operation that
// posted p and has waited on it may call it, once, holding no other
// reference. A receive still in the inbox (its Wait has not returned) is
// left alone.
func (p *pending) release() {
	if p.w != nil && !p.ws.done.done() {
		return
	}
	b := p.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if p.inFree || len(b.free) >= keepPendings {
		return
	}
	p.ws.done.reset()
	p.key, p.w, p.h, p.err, p.want, p.await = mkey{}, nil, Header{}, nil, 0, nil
	p.ws.peer, p.ws.want, p.ws.dst, p.ws.err, p.ws.got, p.ws.claimed, p.ws.scratch = 0, Header{}, nil, nil, Header{}, false, false
	p.inFree = true
	b.free = append(b.free, p)
}

// release hands p back for reuse if its transport recycles them (see
// pending.release); a Pending must not be used after.
func release(p Pending) {
	if r, ok := p.(interface{ release() }); ok {
		r.release()
	}
}

// Wait implements Pending.
func (p *pending) Wait(ctx context.Context) (Header, error) {
	w := p.w
	if w == nil {
		return p.h, p.err
	}
	if w.done.done() {
		return w.got, w.err
	}
	b := p.b
	if p.await != nil {
		if p.await(ctx, &w.done) == nil {
			return w.got, w.err
		}
	} else if w.done.wait(ctx) == nil {
		return w.got, w.err
	}
	b.mu.Lock()
	if w.done.done() { // completed while we took the lock
		b.mu.Unlock()
		return w.got, w.err
	}
	if !w.claimed {
		b.delW(p.key)
		w.complete(fmt.Errorf("no %v frame from rank %d: %w", p.want, p.key.peer, ctx.Err()))
		b.mu.Unlock()
		return Header{}, w.err
	}
	b.mu.Unlock()
	// A reader is filling dst: the peer stalled mid-frame. Fail the link so the
	// reader lets go of dst before we return.
	if b.breakLink != nil {
		b.breakLink(p.key.peer, fmt.Errorf("stalled in the middle of a frame: %w", ctx.Err()))
	}
	if p.await != nil {
		_ = p.await(context.Background(), &w.done)
	} else {
		_ = w.done.wait(context.Background())
	}
	return Header{}, fmt.Errorf("no %v frame from rank %d: %w", p.want, p.key.peer, ctx.Err())
}

// recv implements Transport.Recv on top of the inbox.
func (b *inbox) recv(ctx context.Context, peer int, want Header, dst []byte) (Header, error) {
	p := b.post(peer, want, dst)
	h, err := p.Wait(ctx)
	p.release()
	return h, err
}

// mismatch fails the waiters of h's operation with peer when h belongs to
// another collective; it reports whether it did. Callers hold mu.
func (b *inbox) mismatch(peer int, h Header) bool {
	s, ok := b.sigs[pkey{peer, h.Tag.Group, h.Tag.Seq}]
	if !ok || s.h.Op == h.Op {
		return false
	}
	for key, w := range b.waiting {
		if key.peer == peer && key.tag.Group == h.Tag.Group && key.tag.Seq == h.Tag.Seq && !w.claimed {
			b.delW(key)
			wt := w.want
			wt.Len = uint64(len(w.dst))
			w.complete(&DesyncError{Peer: peer, Want: wt, Got: h})
		}
	}
	return true
}

// claimOrCharge is claimLocked for a reader about to read h's payload: when it
// returns no waiter, the payload has been charged to peer (see
// chargeLocked), or the error says it does not fit.
func (b *inbox) claimOrCharge(peer int, h Header) (*waiter, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if w := b.claimLocked(peer, h); w != nil {
		return w, nil
	}
	return nil, b.chargeLocked(peer, h.Len, false)
}

// claimCharged is claimLocked for a payload already charged to peer and partly
// read: a waiter found takes it over, and the charge is refunded.
func (b *inbox) claimCharged(peer int, h Header) *waiter {
	b.mu.Lock()
	defer b.mu.Unlock()
	w := b.claimLocked(peer, h)
	if w != nil {
		b.refundLocked(peer, h.Len)
	}
	return w
}

// claimLocked is called, with mu held, for header h decoded from peer. It
// returns the waiter whose dst the payload must be read into, or nil when the
// payload has to be buffered. A waiter whose expectations h does not meet is
// completed with a *DesyncError and nil is returned.
func (b *inbox) claimLocked(peer int, h Header) *waiter {
	key := mkey{peer, h.Tag}
	w := b.waiting[key]
	if w == nil {
		b.mismatch(peer, h)
		return nil
	}
	b.take(w, h)
	if err := checkFrame(peer, w.want, h, len(w.dst)); err != nil {
		w.complete(err)
		return nil
	}
	w.claimed = true
	return w
}

// guess returns the oldest receive posted for peer if a reader may read
// into its buffer before it knows the frame is its (see readSpeculative):
// the buffer is scratch (posted with postScratch), holds 1 to max bytes,
// and no reader is filling it. Callers hold mu, and keep holding it while
// they read into the buffer and check the header: while they do, nobody
// can take the receive back.
func (b *inbox) guess(peer, max int) *waiter {
	if peer >= len(b.byPeer) || len(b.byPeer[peer]) == 0 {
		return nil
	}
	w := b.byPeer[peer][0]
	if !w.scratch || w.claimed || len(w.dst) == 0 || len(w.dst) > max {
		return nil
	}
	return w
}

// matches reports whether h is the frame of receive w, sized to fill its
// buffer exactly.
func (w *waiter) matches(h Header) bool {
	return checkFrame(w.peer, w.want, h, len(w.dst)) == nil
}

// claimGuessed claims w for its frame with header h, which a reader has
// found at the start of what it read into w's buffer; callers hold mu
// (since guess).
func (b *inbox) claimGuessed(w *waiter, h Header) {
	b.take(w, h)
	w.claimed = true
}

// completeGuessed completes w, whose whole frame (header h) a reader has
// read into its buffer; callers hold mu (since guess).
func (b *inbox) completeGuessed(w *waiter, h Header) {
	b.take(w, h)
	w.complete(nil)
}

// take removes w from the posted receives for its frame, header h;
// callers hold mu.
func (b *inbox) take(w *waiter, h Header) {
	b.delW(mkey{w.peer, w.want.Tag})
	w.got = h
}

// finish completes a claimed waiter.
func (b *inbox) finish(w *waiter, err error) {
	b.mu.Lock()
	w.complete(err)
	b.mu.Unlock()
}

// store hands over a buffered payload, charged to peer (claimOrCharge): to
// a receive posted meanwhile, or kept (the charge stays until it leaves).
func (b *inbox) store(peer int, h Header, payload []byte) {
	key := mkey{peer, h.Tag}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.aborted[opKey{h.Tag.Group, h.Tag.Seq}] != nil || b.closed != nil {
		b.refundLocked(peer, h.Len)
		return
	}
	if w := b.waiting[key]; w != nil {
		b.refundLocked(peer, h.Len)
		b.delW(key)
		w.got = h
		err := checkFrame(peer, w.want, h, len(w.dst))
		if err == nil {
			copy(w.dst, payload)
		}
		putBuf(payload)
		w.complete(err)
		return
	}
	if b.mismatch(peer, h) {
		b.refundLocked(peer, h.Len)
		return
	}
	if _, dup := b.arrived[key]; dup {
		// A second frame with one tag is a protocol error of the sender; keep
		// the first.
		b.refundLocked(peer, h.Len)
		return
	}
	b.putA(key, arrival{h: h, payload: payload})
}

// deliver hands over a frame whose payload is in parts (in-process links).
func (b *inbox) deliver(peer int, h Header, parts [][]byte) {
	if h.Op == OpAbort {
		var reason []byte
		for _, p := range parts {
			reason = append(reason, p...)
		}
		b.abort(peer, h.Tag, string(reason))
		return
	}
	w, err := b.claimOrCharge(peer, h)
	if err != nil {
		return // only with a bound, which in-process links do not set
	}
	if w != nil {
		off := 0
		for _, p := range parts {
			off += copy(w.dst[off:], p)
		}
		b.finish(w, nil)
		return
	}
	buf := getBuf(int(h.Len))
	off := 0
	for _, p := range parts {
		off += copy(buf[off:], p)
	}
	b.store(peer, h, buf)
}

// abort records that peer gave up on (tag.Group, tag.Seq) and fails its receives.
func (b *inbox) abort(peer int, tag Tag, reason string) {
	k := opKey{tag.Group, tag.Seq}
	err := &AbortError{Peer: peer, Reason: reason}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.aborted[k] != nil {
		return
	}
	b.aborted[k] = err
	b.failWaitingLocked(err, func(key mkey) bool { return key.tag.Group == k.group && key.tag.Seq == k.seq })
	for key, a := range b.arrived {
		if key.tag.Group == k.group && key.tag.Seq == k.seq {
			b.delA(key)
			b.refundLocked(key.peer, a.h.Len)
		}
	}
}

// failPeer fails the unclaimed receives from peer; later receives from peer
// fail too unless their frame already arrived.
func (b *inbox) failPeer(peer int, err error) {
	perr := &PeerError{Peer: peer, Err: err}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.peerErr[peer] != nil {
		return
	}
	b.peerErr[peer] = perr
	b.failWaitingLocked(perr, func(key mkey) bool { return key.peer == peer })
}

// failWaitingLocked completes with err, and forgets, every unclaimed receive
// whose key match accepts. b.mu is held.
func (b *inbox) failWaitingLocked(err error, match func(mkey) bool) {
	for key, w := range b.waiting {
		if !w.claimed && match(key) {
			b.delW(key)
			w.complete(err)
		}
	}
}

func (b *inbox) peerFailed(peer int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed != nil {
		return b.closed
	}
	return b.peerErr[peer]
}

func (b *inbox) close(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed != nil {
		return
	}
	b.closed = err
	b.failWaitingLocked(err, func(mkey) bool { return true })
	b.arrived = make(map[mkey]arrival)
	b.sigs = make(map[pkey]psig)
	clear(b.early)
}

// failedPending is a receive that failed before it was posted.
type failedPending struct{ err error }

func (f failedPending) Wait(context.Context) (Header, error) { return Header{}, f.err }
