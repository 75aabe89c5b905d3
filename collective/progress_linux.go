//go:build linux

package collective

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// progressEngine moves a TCP mesh's bytes in the goroutines that wait for
// them (TCPConfig.ProgressEngine), as MPI's progress engine does: a goroutine
// blocked in Send or Pending.Wait becomes the driver and, with nonblocking
// system calls on raw descriptors, writes every queued frame and reads every
// connection until what it waits for is done. One thread then interleaves
// writing and reading, and no goroutine is woken per frame, where a reader
// goroutine and a blocking writer are parked and woken through the
// runtime's network poller at every full or empty socket buffer
// (docs/collectives.md#tcp-mesh; measured in
// docs/decisions.md#the-tcp-progress-engine).
//
// There is at most one driver (it holds token); other waiters park until
// their item is done or the token is free, so a process has one spinning
// thread at most. A driver that makes no progress for spin (yielding the CPU
// between attempts when yield is set) blocks in poll(2) on every descriptor
// and an eventfd, which non-drivers write when they queue a frame or fail a
// link. Every connection is drained whenever anyone drives, so sending before
// waiting cannot deadlock, as with the reader goroutines.
//
// Descriptors are dups owned by the engine (the net.TCPConns are closed, so
// the runtime's poller never sees these sockets) and are closed only by the
// token holder, so no system call can reach a reused descriptor number.
type progressEngine struct {
	t        *tcpTransport
	peers    []*enginePeer // nil for this rank
	token    chan struct{}
	wakeMu   sync.Mutex // orders kicks before the eventfd's close
	wakeFD   int        // -1 once closed; guarded by wakeMu
	sleeping atomic.Bool
	closed   atomic.Bool
	spin     time.Duration
	yield    bool
	// pollFirst: a pass starts with one poll(2) over all connections (see
	// pass).
	pollFirst bool
	// Driver-only state.
	rr     int
	pfds   []unix.PollFd
	polled []*enginePeer // the peer of each of pfds[1:]
	// Speculative header reads (see readSpeculative) that found the frame
	// expected, and that found another.
	specHits, specMisses int
}

type enginePeer struct {
	id int
	fd int

	mu     sync.Mutex // guards wq and down
	wq     []*outFrame
	queued atomic.Int32 // len(wq), read without mu
	down   error
	isDown atomic.Bool
	free   []*outFrame // released frames, for queue to reuse; guarded by mu

	// Driver-only state.
	dead    bool
	stage   []byte // bytes read ahead of the current frame: stage[rs:re]
	rs, re  int
	inFrame bool
	h       Header
	dst     []byte  // where the current payload goes (a piece of it if unclaimed: see room)
	want    int     // the payload's length, h.Len
	off     int     // bytes of dst filled
	w       *waiter // claimed receive being filled, or nil
	abort   bool    // dst holds an abort reason
	// headerFirst: the last payload from this peer was long, so the next
	// header is read alone and its payload straight into place, instead
	// of both into the stage and the payload copied out.
	headerFirst bool
	iov         []unix.Iovec
	// What the last poll(2) reported: bytes (or an error) to read, room to
	// write.
	readable, writable bool
}

// outFrame is a frame queued for writing; sig fires once it is written whole
// or has failed (err). It is the Pending that startSend returns, and goes
// back to its connection's free list when released.
type outFrame struct {
	e       *progressEngine
	p       int
	hdr     [HeaderSize]byte
	parts   [][]byte  // what remains to be written, header first
	inline  [3][]byte // parts' storage for frames of up to two parts
	started bool      // the driver has taken it; guarded by the peer's mu
	inFree  bool      // on the peer's free list; guarded by its mu
	sig     signal    // fires once written or failed
	err     error
}

// stageBytes is the read-ahead buffer per connection: headers and small
// payloads arrive through it; longer payload remainders are read in place.
const stageBytes = 32 << 10

// writeBudget bounds the bytes written to one connection before the driver
// reads (and serves the other connections): both ends of an exchange fill
// their socket buffers, and each must drain the other's to go on.
const writeBudget = 256 << 10

// readBudget bounds the bytes read from one connection per pass.
const readBudget = 1 << 20

func newProgressEngine(t *tcpTransport, conns []*net.TCPConn, spin time.Duration, yield bool) (*progressEngine, error) {
	e := &progressEngine{t: t, peers: make([]*enginePeer, len(conns)), token: make(chan struct{}, 1),
		spin: spin, yield: yield, wakeFD: -1}
	fail := func(err error) (*progressEngine, error) {
		for _, pp := range e.peers {
			if pp != nil {
				unix.Close(pp.fd)
			}
		}
		if e.wakeFD >= 0 {
			unix.Close(e.wakeFD)
		}
		return nil, fmt.Errorf("collective: progress engine: %w", err)
	}
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return fail(fmt.Errorf("eventfd: %w", err))
	}
	e.wakeFD = fd
	for p, c := range conns {
		if c == nil {
			continue
		}
		rc, err := c.SyscallConn()
		if err != nil {
			return fail(fmt.Errorf("connection to rank %d: %w", p, err))
		}
		dup, derr := -1, error(nil)
		if err := rc.Control(func(f uintptr) { dup, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
			return fail(fmt.Errorf("connection to rank %d: %w", p, err))
		}
		if derr != nil {
			return fail(fmt.Errorf("dup connection to rank %d: %w", p, derr))
		}
		e.peers[p] = &enginePeer{id: p, fd: dup, stage: make([]byte, stageBytes)}
		if err := unix.SetNonblock(dup, true); err != nil {
			return fail(fmt.Errorf("connection to rank %d: %w", p, err))
		}
	}
	// The dups keep the sockets open; closing the conns takes them out of
	// the runtime's poller.
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	e.pollFirst = yield || len(conns)-1 >= pollFirstPeers
	return e, nil
}

// pollFirstPeers is the number of connections from which one poll(2) costs
// less than a read on each (most of which find nothing).
const pollFirstPeers = 3

// zeroTimespec is ppoll's timeout for a poll that only looks; never written.
var zeroTimespec unix.Timespec

// kick wakes a driver blocked in poll(2).
func (e *progressEngine) kick() {
	if !e.sleeping.Load() {
		return
	}
	e.wakeMu.Lock()
	if e.wakeFD >= 0 {
		one := [8]byte{1}
		_, _ = unix.Write(e.wakeFD, one[:])
	}
	e.wakeMu.Unlock()
}

// send queues a frame for peer p and returns once it is written.
func (e *progressEngine) send(ctx context.Context, p int, h Header, parts [][]byte) error {
	f, err := e.queue(p, h, parts)
	if err != nil {
		return err
	}
	err = e.waitFrame(ctx, p, f)
	f.release()
	return err
}

// Wait implements Pending for a frame queued by startSend: it returns once
// the frame is written.
func (f *outFrame) Wait(ctx context.Context) (Header, error) {
	return Header{}, f.e.waitFrame(ctx, f.p, f)
}

// done reports without blocking whether the frame is written or failed.
func (f *outFrame) done() bool { return f.sig.done() }

// keepFrames bounds a connection's free list of frames.
const keepFrames = 64

// release hands f back for reuse by a later queue; see pending.release. A
// frame that never fired (withdrawn from its queue) is left alone.
func (f *outFrame) release() {
	if !f.sig.done() {
		return
	}
	pp := f.e.peers[f.p]
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if f.inFree || len(pp.free) >= keepFrames {
		return
	}
	f.sig.reset()
	f.err, f.started = nil, false
	clear(f.inline[:])
	f.parts = nil
	f.inFree = true
	pp.free = append(pp.free, f)
}

// startSend queues a frame for peer p and returns at once; payload must not
// change until the returned Pending's Wait has returned.
func (e *progressEngine) startSend(p int, h Header, payload []byte) Pending {
	f, err := e.queue(p, h, [][]byte{payload})
	if err != nil {
		return failedPending{err}
	}
	return f
}

// queue appends a frame for peer p to its write queue.
func (e *progressEngine) queue(p int, h Header, parts [][]byte) (*outFrame, error) {
	pp := e.peers[p]
	h.Len = 0
	for _, b := range parts {
		h.Len += uint64(len(b))
	}
	pp.mu.Lock()
	if pp.down != nil {
		err := pp.down
		pp.mu.Unlock()
		return nil, &PeerError{Peer: p, Err: err}
	}
	var f *outFrame
	if k := len(pp.free); k > 0 {
		f = pp.free[k-1]
		pp.free = pp.free[:k-1]
		f.inFree = false
	} else {
		f = &outFrame{e: e, p: p}
		f.sig.init()
	}
	EncodeHeader(f.hdr[:], h)
	f.parts = f.inline[:0]
	f.parts = append(f.parts, f.hdr[:])
	for _, b := range parts {
		if len(b) > 0 {
			f.parts = append(f.parts, b)
		}
	}
	pp.wq = append(pp.wq, f)
	pp.queued.Add(1)
	pp.mu.Unlock()
	e.kick()
	return f, nil
}

// waitFrame returns once f is written or has failed, or ctx has ended.
func (e *progressEngine) waitFrame(ctx context.Context, p int, f *outFrame) error {
	pp := e.peers[p]
	if err := e.await(ctx, &f.sig); err == nil {
		return f.err
	}
	// ctx ended. A frame not yet taken is withdrawn; one partly written
	// leaves the stream unusable, so the link fails, and the driver lets go
	// of the frame's buffers before we return.
	pp.mu.Lock()
	if !slices.Contains(pp.wq, f) {
		// Written whole (or failed) since await gave up: the driver fires
		// it next. The link is fine.
		pp.mu.Unlock()
		_ = e.await(context.Background(), &f.sig)
		return f.err
	}
	if !f.started {
		for i, q := range pp.wq {
			if q == f {
				pp.wq = slices.Delete(pp.wq, i, i+1)
				pp.queued.Add(-1)
				break
			}
		}
		pp.mu.Unlock()
		return fmt.Errorf("waiting to write to rank %d: %w", p, ctx.Err())
	}
	pp.mu.Unlock()
	err := fmt.Errorf("write stalled: %w", ctx.Err())
	e.t.linkDown(p, err)
	_ = e.await(context.Background(), &f.sig)
	if f.err == nil {
		return nil // it finished after all
	}
	return &PeerError{Peer: p, Err: err}
}

// await returns nil once done fires, or ctx's error when ctx ends first.
// Meanwhile it drives the engine whenever nobody else does.
func (e *progressEngine) await(ctx context.Context, done *signal) error {
	for !done.done() {
		select {
		case <-done.wake: // a hint: checked above
		case e.token <- struct{}{}:
			err := e.drive(ctx, done)
			<-e.token
			return err
		case <-ctx.Done():
			if done.done() {
				return nil
			}
			return ctx.Err()
		}
	}
	return nil
}

// poke makes one pass over the connections if nobody drives: a goroutine
// that computes between waits (copies, reductions) calls it between pieces
// of its work so that the sockets keep moving.
func (e *progressEngine) poke() {
	select {
	case e.token <- struct{}{}:
		e.pass(context.Background())
		<-e.token
	default:
	}
}

// pass is one pass over the connections. When system calls are dear (ranks
// share cores) or there are several connections, it first asks poll(2)
// which of them a pass would find anything on: one call instead of a read
// on each that mostly returns EAGAIN.
func (e *progressEngine) pass(ctx context.Context) bool {
	if e.pollFirst {
		e.wait(ctx, 0)
		return e.step(true) // also serves what is already staged
	}
	return e.step(false)
}

// drive makes progress until done fires or ctx ends; the caller holds
// the token.
func (e *progressEngine) drive(ctx context.Context, done *signal) error {
	var idle time.Time
	polled := false // the readiness from the last poll(2) is fresh
	ctxDone := ctx.Done()
	for {
		var moved bool
		if polled {
			moved = e.step(true)
		} else {
			moved = e.pass(ctx)
		}
		polled = false
		if moved {
			idle = time.Time{}
		}
		if done.done() {
			e.flush()
			return nil
		}
		// One channel at a time: a select over several locks them all.
		select {
		case <-ctxDone:
			return ctx.Err()
		default:
		}
		if idle.IsZero() {
			idle = time.Now()
			continue
		}
		if time.Since(idle) < e.spin {
			if e.yield {
				// Ranks share cores: let the others run.
				_, _, _ = unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
			}
			continue
		}
		e.wait(ctx, 10*time.Millisecond)
		polled = true
		idle = time.Time{}
	}
}

// step is one pass over the connections; it reports whether anything moved.
func (e *progressEngine) step(onlyReady bool) bool {
	moved := false
	closed := e.closed.Load()
	n := len(e.peers)
	e.rr++
	for i := range n {
		pp := e.peers[(e.rr+i)%n]
		if pp == nil || pp.dead {
			continue
		}
		if closed || pp.isDown.Load() {
			e.bury(pp)
			moved = true
			continue
		}
		if pp.queued.Load() > 0 && (!onlyReady || pp.writable) && e.write(pp) {
			moved = true
		}
		// Bytes already in the stage (a pass that stopped at readBudget)
		// may hold whole frames: read serves those before the socket,
		// which may have nothing more to say.
		if (!onlyReady || pp.readable || pp.re > pp.rs) && e.read(pp) {
			moved = true
		}
	}
	return moved
}

// flush writes queued frames until the sockets take no more. A driver
// calls it before it returns: a peer may be waiting for the rest of a frame
// of ours while this goroutine goes on to compute, and socket buffers are
// large enough to take most of it now.
func (e *progressEngine) flush() {
	for moved := true; moved; {
		moved = false
		for _, pp := range e.peers {
			if pp != nil && !pp.dead && !pp.isDown.Load() && pp.queued.Load() > 0 && e.write(pp) {
				moved = true
			}
		}
	}
}

// wait waits in poll(2) for a connection to become readable (or writable,
// with frames queued) or for the eventfd, for at most timeout (0: only
// checks) or until ctx's deadline, whichever is first. It records in each
// peer's readable and writable what a pass (step(true)) must serve; when it
// cannot tell (a failed link, a closed engine, a failed poll, a deadline
// already past) it marks them all.
func (e *progressEngine) wait(ctx context.Context, timeout time.Duration) {
	if dl, ok := ctx.Deadline(); ok && timeout > 0 {
		timeout = min(timeout, time.Until(dl))
		if timeout <= 0 {
			e.markAll()
			return
		}
	}
	if timeout > 0 {
		e.sleeping.Store(true)
		defer e.sleeping.Store(false)
	}
	// Built after sleeping is set: a frame queued before is in the set, one
	// queued after kicks the eventfd.
	e.pfds = append(e.pfds[:0], unix.PollFd{Fd: int32(e.wakeFD), Events: unix.POLLIN})
	e.polled = e.polled[:0]
	for _, pp := range e.peers {
		if pp == nil || pp.dead {
			continue
		}
		if pp.isDown.Load() || e.closed.Load() {
			e.markAll()
			return
		}
		ev := int16(unix.POLLIN)
		if pp.queued.Load() > 0 {
			ev |= unix.POLLOUT
		}
		e.pfds = append(e.pfds, unix.PollFd{Fd: int32(pp.fd), Events: ev})
		e.polled = append(e.polled, pp)
	}
	ms := int((timeout + time.Millisecond - 1) / time.Millisecond)
	var n int
	if ms == 0 {
		// Raw: a poll that cannot block only looks (see rawReadv2). ppoll
		// with a zero timeout, which every Linux architecture has (poll is
		// missing on arm64).
		r, _, errno := unix.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&e.pfds[0])), uintptr(len(e.pfds)),
			uintptr(unsafe.Pointer(&zeroTimespec)), 0, 0, 0)
		if errno != 0 {
			e.markAll()
			return
		}
		n = int(r)
	} else {
		var err error
		if n, err = unix.Poll(e.pfds, ms); err != nil {
			e.markAll()
			return
		}
	}
	if n > 0 && e.pfds[0].Revents != 0 {
		var b [8]byte
		_, _ = unix.Read(e.wakeFD, b[:])
	}
	for i, pp := range e.polled {
		ev := e.pfds[i+1].Revents
		if n <= 0 {
			ev = 0
		}
		// An error or hang-up shows in both, so that the pass finds it.
		pp.readable = ev&^unix.POLLOUT != 0
		pp.writable = ev&^unix.POLLIN != 0
	}
}

// markAll has the next pass serve every connection.
func (e *progressEngine) markAll() {
	for _, pp := range e.peers {
		if pp != nil {
			pp.readable, pp.writable = true, true
		}
	}
}

// write writes up to writeBudget bytes of pp's queued frames.
func (e *progressEngine) write(pp *enginePeer) bool {
	moved := false
	budget := writeBudget
	for budget > 0 {
		// mu is held through the (nonblocking) writev and the frame's
		// bookkeeping: a waitFrame that gives up finds its frame either
		// off the queue or not yet written whole, never written whole but
		// still queued (which it would take for a stall).
		pp.mu.Lock()
		if len(pp.wq) == 0 {
			pp.mu.Unlock()
			return moved
		}
		f := pp.wq[0]
		f.started = true
		pp.iov = pp.iov[:0]
		left := budget
		for _, b := range f.parts {
			if left == 0 {
				break
			}
			b = b[:min(len(b), left)]
			left -= len(b)
			v := unix.Iovec{Base: &b[0]}
			v.SetLen(len(b))
			pp.iov = append(pp.iov, v)
		}
		want := budget - left
		// Raw (see rawReadv2): a nonblocking writev only copies.
		r, _, errno := unix.RawSyscall(unix.SYS_WRITEV, uintptr(pp.fd), uintptr(unsafe.Pointer(&pp.iov[0])), uintptr(len(pp.iov)))
		runtime.KeepAlive(f)
		if errno != 0 {
			pp.mu.Unlock()
			switch errno {
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return moved
			}
			e.t.linkDown(pp.id, fmt.Errorf("write: %w", errno))
			e.bury(pp)
			return true
		}
		n := int(r)
		moved = true
		budget -= n
		// A short write filled the socket: another would only return EAGAIN.
		full := n < want
		for n > 0 {
			k := min(n, len(f.parts[0]))
			f.parts[0] = f.parts[0][k:]
			n -= k
			if len(f.parts[0]) == 0 {
				f.parts = f.parts[1:]
			}
		}
		done := len(f.parts) == 0
		if done {
			// Shift rather than reslice, so that the queue keeps its
			// capacity and appending to it does not allocate.
			pp.wq = slices.Delete(pp.wq, 0, 1)
			pp.queued.Add(-1)
		}
		pp.mu.Unlock()
		if done {
			f.sig.fire()
		}
		if full {
			return moved
		}
	}
	return moved
}

// bury closes a failed connection (token holder only) and fails what still
// depends on it: queued frames and a receive being filled.
func (e *progressEngine) bury(pp *enginePeer) {
	if pp.dead {
		return
	}
	pp.dead = true
	pp.mu.Lock()
	err := pp.down
	if err == nil {
		err = ErrClosed
		pp.down = err
	}
	wq := pp.wq
	pp.wq = nil
	pp.queued.Store(0)
	pp.mu.Unlock()
	unix.Close(pp.fd)
	perr := &PeerError{Peer: pp.id, Err: err}
	for _, f := range wq {
		f.err = perr
		f.sig.fire()
	}
	if pp.inFrame {
		if pp.w != nil {
			e.t.in.finish(pp.w, perr)
		} else if !pp.abort {
			putBuf(pp.dst)
			e.t.in.refund(pp.id, pp.h.Len)
		}
		pp.inFrame, pp.w, pp.dst = false, nil, nil
	}
}

// linkDown records that the link to p failed; the driver buries it.
func (e *progressEngine) linkDown(p int, err error) {
	pp := e.peers[p]
	pp.mu.Lock()
	if pp.down == nil {
		pp.down = err
	}
	pp.mu.Unlock()
	pp.isDown.Store(true)
	e.kick()
}

// close fails everything and releases the descriptors once no driver runs
// (a driver sees closed within a poll timeout, or at once when kicked).
func (e *progressEngine) close() {
	e.closed.Store(true)
	e.kick()
	select {
	case e.token <- struct{}{}:
	case <-time.After(5 * time.Second):
		return // a driver is stuck in a system call: leave its descriptors
	}
	for _, pp := range e.peers {
		if pp != nil {
			e.bury(pp)
		}
	}
	e.wakeMu.Lock()
	unix.Close(e.wakeFD)
	e.wakeFD = -1
	e.wakeMu.Unlock()
	<-e.token
}
