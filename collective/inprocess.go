package collective

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// InProcOption configures NewInProcess.
type InProcOption func(*inprocNet)

// WithFaults attaches a fault injector to the in-process network; the test
// drives it while the ranks run.
func WithFaults(f *Faults) InProcOption {
	return func(n *inprocNet) { n.faults = f; f.setNet(n) }
}

// NewInProcess returns the transports of an n-rank job whose ranks are
// goroutines of this process. A frame is copied once, from the sender's parts
// into the receiver's buffer. Links are FIFO.
func NewInProcess(n int, opts ...InProcOption) []Transport {
	if n < 1 {
		n = 1
	}
	net := &inprocNet{ranks: make([]*inprocTransport, n)}
	for _, o := range opts {
		o(net)
	}
	out := make([]Transport, n)
	for r := range n {
		t := &inprocTransport{net: net, rank: r, in: newInbox()}
		net.ranks[r] = t
		out[r] = t
	}
	return out
}

type inprocNet struct {
	ranks  []*inprocTransport
	faults *Faults
}

type inprocTransport struct {
	net  *inprocNet
	rank int
	in   *inbox
	mu   sync.Mutex
	dead bool
}

func (t *inprocTransport) Rank() int { return t.rank }
func (t *inprocTransport) Size() int { return len(t.net.ranks) }

func (t *inprocTransport) Send(ctx context.Context, peer int, h Header, parts ...[]byte) error {
	if peer < 0 || peer >= len(t.net.ranks) || peer == t.rank {
		return fmt.Errorf("send to rank %d: not a peer of rank %d in a world of %d", peer, t.rank, len(t.net.ranks))
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	t.mu.Lock()
	dead := t.dead
	t.mu.Unlock()
	if dead {
		return ErrClosed
	}
	if err := t.in.peerFailed(peer); err != nil {
		return err
	}
	h.Len = 0
	for _, p := range parts {
		h.Len += uint64(len(p))
	}
	dst := t.net.ranks[peer]
	if f := t.net.faults; f != nil {
		drop, delay := f.judge(t.rank, peer, h)
		if drop {
			return nil
		}
		if delay > 0 {
			payload := make([]byte, 0, h.Len)
			for _, p := range parts {
				payload = append(payload, p...)
			}
			f.delayed(t.rank, peer, delay, h, payload)
			return nil
		}
	}
	dst.in.deliver(t.rank, h, parts)
	return nil
}

func (t *inprocTransport) Recv(ctx context.Context, peer int, want Header, dst []byte) (Header, error) {
	if peer < 0 || peer >= len(t.net.ranks) || peer == t.rank {
		return Header{}, fmt.Errorf("receive from rank %d: not a peer of rank %d in a world of %d", peer, t.rank, len(t.net.ranks))
	}
	return t.in.recv(ctx, peer, want, dst)
}

func (t *inprocTransport) Post(peer int, want Header, dst []byte) Pending {
	if peer < 0 || peer >= len(t.net.ranks) || peer == t.rank {
		return failedPending{fmt.Errorf("receive from rank %d: not a peer of rank %d in a world of %d", peer, t.rank, len(t.net.ranks))}
	}
	return t.in.post(peer, want, dst)
}

func (t *inprocTransport) Close() error {
	t.mu.Lock()
	if t.dead {
		t.mu.Unlock()
		return nil
	}
	t.dead = true
	t.mu.Unlock()
	t.in.close(ErrClosed)
	for _, q := range t.net.ranks {
		if q != t {
			q.in.failPeer(t.rank, errors.New("peer closed its transport"))
		}
	}
	return nil
}

// Faults injects failures into an in-process network: dropped frames
// (silent loss), per-link delays, cut links (both ends notice, like a TCP
// reset) and killed ranks (the rank's transport closes; peers notice).
type Faults struct {
	mu     sync.Mutex
	net    *inprocNet
	drop   func(from, to int, h Header) bool
	delay  map[[2]int]time.Duration
	queues map[[2]int]*delayQueue
}

// NewFaults returns an injector that does nothing until told to.
func NewFaults() *Faults {
	return &Faults{delay: make(map[[2]int]time.Duration), queues: make(map[[2]int]*delayQueue)}
}

func (f *Faults) setNet(n *inprocNet) { f.mu.Lock(); f.net = n; f.mu.Unlock() }

// Drop makes every frame for which fn returns true vanish silently. fn is
// called concurrently from sending goroutines. nil stops dropping.
func (f *Faults) Drop(fn func(from, to int, h Header) bool) {
	f.mu.Lock()
	f.drop = fn
	f.mu.Unlock()
}

// Delay holds every frame from → to for d before delivery (FIFO kept).
func (f *Faults) Delay(from, to int, d time.Duration) {
	f.mu.Lock()
	f.delay[[2]int{from, to}] = d
	f.mu.Unlock()
}

// Cut breaks the link between a and b in both directions; both ends see a
// *PeerError on receives from the other and on sends to it.
func (f *Faults) Cut(a, b int) {
	n := f.getNet()
	if n == nil || a == b || a < 0 || b < 0 || a >= len(n.ranks) || b >= len(n.ranks) {
		return
	}
	n.ranks[a].in.failPeer(b, errors.New("link cut"))
	n.ranks[b].in.failPeer(a, errors.New("link cut"))
}

// Kill stops rank r as if its process died.
func (f *Faults) Kill(r int) {
	n := f.getNet()
	if n == nil || r < 0 || r >= len(n.ranks) {
		return
	}
	_ = n.ranks[r].Close()
}

func (f *Faults) getNet() *inprocNet {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.net
}

func (f *Faults) judge(from, to int, h Header) (drop bool, delay time.Duration) {
	f.mu.Lock()
	fn := f.drop
	delay = f.delay[[2]int{from, to}]
	f.mu.Unlock()
	if fn != nil && fn(from, to, h) {
		return true, 0
	}
	return false, delay
}

type delayedFrame struct {
	at      time.Time
	h       Header
	payload []byte
}

// delayQueue delivers one link's delayed frames in order; its goroutine runs
// only while frames are queued.
type delayQueue struct {
	mu      sync.Mutex
	frames  []delayedFrame
	running bool
}

func (f *Faults) delayed(from, to int, d time.Duration, h Header, payload []byte) {
	f.mu.Lock()
	q := f.queues[[2]int{from, to}]
	if q == nil {
		q = &delayQueue{}
		f.queues[[2]int{from, to}] = q
	}
	n := f.net
	f.mu.Unlock()
	q.mu.Lock()
	q.frames = append(q.frames, delayedFrame{at: time.Now().Add(d), h: h, payload: payload})
	start := !q.running
	q.running = true
	q.mu.Unlock()
	if !start {
		return
	}
	go func() {
		for {
			q.mu.Lock()
			if len(q.frames) == 0 {
				q.running = false
				q.mu.Unlock()
				return
			}
			fr := q.frames[0]
			q.frames = q.frames[1:]
			q.mu.Unlock()
			time.Sleep(time.Until(fr.at))
			n.ranks[to].in.deliver(from, fr.h, [][]byte{fr.payload})
		}
	}()
}
