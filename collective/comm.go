package collective

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"
	"time"
)

// ReduceOp combines the contributions of the ranks element-wise.
type ReduceOp int

const (
	// Sum adds the contributions.
	Sum ReduceOp = iota
	// Mean adds the contributions and divides by the group size.
	Mean
)

func (o ReduceOp) String() string {
	switch o {
	case Sum:
		return "sum"
	case Mean:
		return "mean"
	}
	return fmt.Sprintf("reduceop(%d)", int(o))
}

// Config tunes a communicator. The zero value of a field means its default.
type Config struct {
	// Timeout bounds an operation whose context has no deadline, and every
	// asynchronous operation. Default 60s: longer than any sane collective,
	// short enough that a lost peer does not stall a job for good.
	Timeout time.Duration
	// SegmentBytes is the pipelining unit of ring algorithms: reduction of one
	// segment overlaps the transfer of the next, and each segment is one frame.
	// Default 256 KiB: finer pipelining beat 1 MiB and 512 KiB segments once
	// connections were no longer paced by BBR (see DefaultCongestion;
	// measured in docs/decisions.md#ring-segments-of-256-kib).
	SegmentBytes int
	// SmallBytes: all-reduces of at most this many bytes use the
	// latency-optimised algorithm (recursive doubling) instead of
	// halving-doubling or the ring. Default 64 KiB (measured in
	// docs/decisions.md#recursive-doubling-for-small-all-reduces).
	SmallBytes int
	// HalvingBytes: larger all-reduces up to this size over a power-of-two
	// group of more than 2 use recursive halving + doubling (2·log2 n
	// exchanges); beyond it (or for other group sizes) the pipelined ring.
	// Two ranks always take the ring: it moves the same bytes as halving but
	// streams the reduced segments back without a phase barrier. Default
	// 32 MiB; negative disables halving.
	HalvingBytes int
	// Hosts is the host of every world rank; nil asks the transport (TCP
	// knows TCPConfig.Hosts). With HierAllToAll, an all-to-all whose
	// members span several hosts, some with more than one member, goes
	// hierarchically (see allToAllHier). It is off by default: on the
	// shaped two-host benchmark it measured slower than the flat exchange
	// (docs/collectives.md#hierarchical-all-to-all).
	Hosts        []string
	HierAllToAll bool
}

func (c Config) withDefaults() Config {
	if c.Timeout <= 0 {
		c.Timeout = 60 * time.Second
	}
	if c.SegmentBytes <= 0 {
		c.SegmentBytes = 256 << 10
	}
	if c.SegmentBytes < 64 {
		c.SegmentBytes = 64
	}
	if c.SmallBytes <= 0 {
		c.SmallBytes = 64 << 10
	}
	if c.HalvingBytes == 0 {
		c.HalvingBytes = 32 << 20
	}
	return c
}

// MaxSegmentFrame is the largest payload, in bytes, that the all-reduce,
// reduce-scatter, all-gather, broadcast and barrier of a communicator with
// this Config put in one frame, but for all-reduces of fewer elements than
// ranks: they move segments of SegmentBytes, or whole buffers of at most
// SmallBytes (recursive doubling, the binomial broadcast; see
// docs/collectives.md#algorithms). All-to-all blocks and point-to-point
// messages go whole: their callers know how large those are.
func (c Config) MaxSegmentFrame() int {
	c = c.withDefaults()
	return max(c.SegmentBytes, c.SmallBytes)
}

// Comm is a communicator: a group of world ranks with its own tag space.
// Collective operations must be called by every member in the same order
// (asynchronous ones are ordered by their start call). Operations on one Comm
// may run concurrently with each other and with operations on other Comms over
// the same Transport. After an operation fails, the communicator's members may
// disagree about what completed, and nothing here repairs that: callers must
// not go on as if it had succeeded everywhere. The training runtime fails the
// step and the coordinator aborts the job (see
// docs/control-plane.md#failure-handling).
type Comm struct {
	t     Transport
	cfg   Config
	name  string
	group uint64
	ranks []int // world rank of each member, indexed by comm rank
	rank  int   // this process's comm rank

	mu      sync.Mutex
	seq     uint64
	subs    map[string]uint64
	p2pSend map[int]uint64
	p2pRecv map[int]uint64

	hierOnce   sync.Once // computes the host groups below, once
	hierGroups [][]int
	hierOf     []int
	hierOK     bool
}

// groupsByHost is hostGroups, computed once per communicator.
func (c *Comm) groupsByHost() ([][]int, []int, bool) {
	c.hierOnce.Do(func() { c.hierGroups, c.hierOf, c.hierOK = c.hostGroups() })
	return c.hierGroups, c.hierOf, c.hierOK
}

// NewWorld returns the communicator of all ranks of t with default Config.
func NewWorld(t Transport) *Comm { return NewWorldConfig(t, Config{}) }

// NewWorldConfig returns the communicator of all ranks of t.
func NewWorldConfig(t Transport, cfg Config) *Comm {
	ranks := make([]int, t.Size())
	for i := range ranks {
		ranks[i] = i
	}
	return newComm(t, cfg.withDefaults(), "world", 0x6d6f6574726169, ranks, t.Rank())
}

func newComm(t Transport, cfg Config, name string, group uint64, ranks []int, rank int) *Comm {
	return &Comm{t: t, cfg: cfg, name: name, group: group, ranks: ranks, rank: rank,
		subs: make(map[string]uint64), p2pSend: make(map[int]uint64), p2pRecv: make(map[int]uint64)}
}

// Rank is this process's rank within the communicator.
func (c *Comm) Rank() int { return c.rank }

// Size is the number of members.
func (c *Comm) Size() int { return len(c.ranks) }

// WorldRanks returns the world rank of every member, by comm rank.
func (c *Comm) WorldRanks() []int { return append([]int(nil), c.ranks...) }

// Config returns the communicator's settings (defaults filled in).
func (c *Comm) Config() Config { return c.cfg }

// Sub returns the communicator of the members listed by their rank in c; the
// list order defines the new ranks. It exchanges no messages: every listed
// member, and only they, must call Sub with the same list in the same order
// relative to their other Sub calls on c. The new group's tag space is derived
// from c's, the list and how many times that list was used on c.
func (c *Comm) Sub(ranks []int) (*Comm, error) {
	if len(ranks) == 0 {
		return nil, fmt.Errorf("collective: sub-group of %s: empty rank list", c.name)
	}
	seen := make(map[int]bool, len(ranks))
	me := -1
	world := make([]int, len(ranks))
	for i, r := range ranks {
		if r < 0 || r >= len(c.ranks) {
			return nil, fmt.Errorf("collective: sub-group of %s: rank %d (entry %d) outside 0..%d", c.name, r, i, len(c.ranks)-1)
		}
		if seen[r] {
			return nil, fmt.Errorf("collective: sub-group of %s: rank %d listed twice", c.name, r)
		}
		seen[r] = true
		world[i] = c.ranks[r]
		if r == c.rank {
			me = i
		}
	}
	if me < 0 {
		return nil, fmt.Errorf("collective: sub-group %v of %s: this rank (%d) is not a member", ranks, c.name, c.rank)
	}
	key := fmt.Sprint(ranks)
	c.mu.Lock()
	n := c.subs[key]
	c.subs[key] = n + 1
	c.mu.Unlock()
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], c.group)
	h.Write(b[:])
	binary.LittleEndian.PutUint64(b[:], n)
	h.Write(b[:])
	for _, r := range ranks {
		binary.LittleEndian.PutUint64(b[:], uint64(r))
		h.Write(b[:])
	}
	name := fmt.Sprintf("%s/%v", c.name, world)
	return newComm(c.t, c.cfg, name, h.Sum64(), world, me), nil
}

// OpError is returned by every failed operation: which operation, on which
// communicator and rank, and why (a *PeerError, *DesyncError, *AbortError or
// context error names the peer).
type OpError struct {
	Op    Op
	Comm  string
	Seq   uint64
	Rank  int // world rank of the reporting process
	Err   error
	Group uint64
}

func (e *OpError) Error() string {
	return fmt.Sprintf("collective %s #%d on %s (world rank %d): %v", e.Op, e.Seq, e.Comm, e.Rank, e.Err)
}

func (e *OpError) Unwrap() error { return e.Err }

// opRun is one operation in flight.
type opRun struct {
	c     *Comm
	op    Op
	seq   uint64
	count uint64
}

func (c *Comm) begin(op Op, count int) opRun {
	c.mu.Lock()
	c.seq++
	s := c.seq
	c.mu.Unlock()
	return opRun{c: c, op: op, seq: s, count: uint64(count)}
}

func (o *opRun) header(step uint32) Header {
	return Header{Op: o.op, Tag: Tag{Group: o.c.group, Seq: o.seq, Step: step}, Count: o.count}
}

// send and recv address peers by comm rank.
func (o *opRun) send(ctx context.Context, peer int, step uint32, parts ...[]byte) error {
	var err error
	if ss := asyncSender(o.c.t); ss != nil && len(parts) == 1 {
		// Queued and waited for: the same as Send, without handing parts
		// to an interface method (which would move it to the heap).
		p := ss.startSend(o.c.ranks[peer], o.header(step), parts[0])
		_, err = p.Wait(ctx)
		release(p)
	} else {
		// A copy goes to the interface method, so that parts itself (the
		// caller's variadic slice) stays on the caller's stack.
		err = o.c.t.Send(ctx, o.c.ranks[peer], o.header(step), slices.Clone(parts)...)
	}
	if err != nil {
		return fmt.Errorf("send to rank %d: %w", o.c.ranks[peer], err)
	}
	return nil
}

func (o *opRun) recv(ctx context.Context, peer int, step uint32, dst []byte) error {
	if _, err := o.c.t.Recv(ctx, o.c.ranks[peer], o.header(step), dst); err != nil {
		return fmt.Errorf("receive from rank %d: %w", o.c.ranks[peer], err)
	}
	return nil
}

// post registers a receive from peer (comm rank) for the given step.
func (o *opRun) post(peer int, step uint32, dst []byte) Pending {
	return o.c.t.Post(o.c.ranks[peer], o.header(step), dst)
}

func (o *opRun) wait(ctx context.Context, peer int, p Pending) error {
	if _, err := p.Wait(ctx); err != nil {
		return fmt.Errorf("receive from rank %d: %w", o.c.ranks[peer], err)
	}
	return nil
}

// withdraw cancels a posted receive that will not be waited for.
func (o *opRun) withdraw(p Pending) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _ = p.Wait(ctx)
}

// fail wraps err as the operation's error. A collective also tells the other
// members to give up on it, so they fail now instead of at their deadline; a
// point-to-point failure is not broadcast: only two ranks take part.
func (o *opRun) fail(err error) error {
	oe := &OpError{Op: o.op, Comm: o.c.name, Seq: o.seq &^ p2pSeqBit, Rank: o.c.ranks[o.c.rank], Err: err, Group: o.c.group}
	if o.seq&p2pSeqBit != 0 {
		return oe
	}
	reason := []byte(oe.Error())
	if len(reason) > maxAbortReason {
		reason = reason[:maxAbortReason]
	}
	h := Header{Op: OpAbort, Tag: Tag{Group: o.c.group, Seq: o.seq}}
	t := o.c.t // the goroutines must not hold o, which may live on the stack
	for i, w := range o.c.ranks {
		if i == o.c.rank {
			continue
		}
		go func(w int) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = t.Send(ctx, w, h, reason)
		}(w)
	}
	return oe
}

// run executes fn synchronously under the caller's context (or the default
// deadline). fn does not escape: a closure over an opRun on the caller's
// stack stays there.
func (o *opRun) run(ctx context.Context, fn func(ctx context.Context) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.c.cfg.Timeout)
		defer cancel()
	}
	if err := fn(ctx); err != nil {
		return o.fail(err)
	}
	return nil
}

// Request is an operation started asynchronously.
type Request struct {
	done   chan struct{}
	err    error
	cancel context.CancelFunc
}

// async starts fn now under the communicator's default deadline.
func (o *opRun) async(fn func(ctx context.Context) error) *Request {
	ctx, cancel := context.WithTimeout(context.Background(), o.c.cfg.Timeout)
	r := &Request{done: make(chan struct{}), cancel: cancel}
	go func() {
		defer cancel()
		if err := fn(ctx); err != nil {
			r.err = o.fail(err)
		}
		close(r.done)
	}()
	return r
}

func failedRequest(err error) *Request {
	r := &Request{done: make(chan struct{}), err: err, cancel: func() {}}
	close(r.done)
	return r
}

// Wait blocks until the operation completes and returns its error. If ctx
// ends first the operation is cancelled (which fails it on the other ranks
// too) and Wait returns once it has let go of its buffers.
func (r *Request) Wait(ctx context.Context) error {
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		r.cancel()
		<-r.done
		if r.err != nil {
			return fmt.Errorf("%w (waited: %v)", r.err, ctx.Err())
		}
		return nil
	}
}

// Done is closed when the operation has completed.
func (r *Request) Done() <-chan struct{} { return r.done }

// WaitAll waits for every request and returns the first error.
func WaitAll(ctx context.Context, rs ...*Request) error {
	var first error
	for _, r := range rs {
		if err := r.Wait(ctx); err != nil && first == nil {
			first = err
		}
	}
	return first
}
