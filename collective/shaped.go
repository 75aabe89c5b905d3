package collective

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// LinkShape limits the From → To direction of a link (links are full duplex:
// the other direction has its own shape). From or To == -1 matches any rank.
// When several shapes match a direction, the last one wins, so a list can
// start with a default and refine it.
type LinkShape struct {
	From, To  int
	Bandwidth float64       // bytes per second; 0 means unlimited
	Latency   time.Duration // one-way delay added to every frame
}

// NewShaped wraps t so that each outgoing link transmits at most Bandwidth
// bytes per second (frames, header included, are serialised on the link:
// concurrent sends to one peer queue behind each other) and each frame
// becomes visible to its receiver Latency after its last byte left. The
// link's queue is unbounded: Send returns at once, the receiver waits. Every
// rank of the job must wrap its transport with the same shapes: bandwidth is
// enforced by the sender, latency by the receiver (from the send time in the
// frame header; ranks are assumed to share a clock, as on one host).
func NewShaped(t Transport, links ...LinkShape) Transport {
	n, r := t.Size(), t.Rank()
	s := &shapedTransport{inner: t, out: make([]*pacer, n), lat: make([]time.Duration, n)}
	for p := range n {
		if p == r {
			continue
		}
		var out, in LinkShape
		for _, l := range links {
			if (l.From == r || l.From == -1) && (l.To == p || l.To == -1) {
				out = l
			}
			if (l.From == p || l.From == -1) && (l.To == r || l.To == -1) {
				in = l
			}
		}
		s.out[p] = &pacer{bw: out.Bandwidth}
		s.lat[p] = in.Latency
	}
	return s
}

type shapedTransport struct {
	inner Transport
	out   []*pacer        // by destination
	lat   []time.Duration // latency of the link from each source
}

// pacer serialises one direction of a link at a fixed bandwidth.
type pacer struct {
	mu   sync.Mutex
	bw   float64
	free time.Time // when the link finishes its queued bytes
}

// reserve books size bytes on the link and returns when they finish.
func (p *pacer) reserve(size int) time.Time {
	now := time.Now()
	if p.bw <= 0 {
		return now
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	start := p.free
	if start.Before(now) {
		start = now
	}
	p.free = start.Add(time.Duration(float64(size) / p.bw * 1e9))
	return p.free
}

func (s *shapedTransport) Rank() int    { return s.inner.Rank() }
func (s *shapedTransport) Size() int    { return s.inner.Size() }
func (s *shapedTransport) Close() error { return s.inner.Close() }

func (s *shapedTransport) Send(ctx context.Context, peer int, h Header, parts ...[]byte) error {
	if peer < 0 || peer >= len(s.out) || s.out[peer] == nil {
		return fmt.Errorf("send to rank %d: not a peer of rank %d in a world of %d", peer, s.Rank(), len(s.out))
	}
	size := frameSize(parts)
	// The frame goes out now; the receiver holds it until its last byte has
	// crossed the link (done) plus the latency. Send does not wait for done:
	// the link queues frames back to back like a NIC queue, so timer
	// granularity (Go sleeps of under 1ms may round up to 1ms) never idles
	// the link.
	done := s.out[peer].reserve(size)
	h.Time = done.UnixNano()
	return s.inner.Send(ctx, peer, h, parts...)
}

// asyncSends implements sendStarter when the wrapped transport does: a
// shaped send goes out at once like any other (the receiver holds it).
// hosts implements hostLister for the transport underneath.
func (s *shapedTransport) hosts() []string {
	if hl, ok := s.inner.(hostLister); ok {
		return hl.hosts()
	}
	return nil
}

func (s *shapedTransport) asyncSends() bool { return asyncSender(s.inner) != nil }

func (s *shapedTransport) startSend(peer int, h Header, payload []byte) Pending {
	if peer < 0 || peer >= len(s.out) || s.out[peer] == nil {
		return failedPending{fmt.Errorf("send to rank %d: not a peer of rank %d in a world of %d", peer, s.Rank(), len(s.out))}
	}
	h.Time = s.out[peer].reserve(HeaderSize + len(payload)).UnixNano()
	return asyncSender(s.inner).startSend(peer, h, payload)
}

func (s *shapedTransport) progress() {
	if ss := asyncSender(s.inner); ss != nil {
		ss.progress()
	}
}

// frameSize is the bytes a frame of parts occupies on a link.
func frameSize(parts [][]byte) int {
	size := HeaderSize
	for _, b := range parts {
		size += len(b)
	}
	return size
}

func (s *shapedTransport) Recv(ctx context.Context, peer int, want Header, dst []byte) (Header, error) {
	return s.Post(peer, want, dst).Wait(ctx)
}

func (s *shapedTransport) Post(peer int, want Header, dst []byte) Pending {
	return &shapedPending{inner: s.inner.Post(peer, want, dst), s: s, peer: peer}
}

type shapedPending struct {
	inner Pending
	s     *shapedTransport
	peer  int
}

// Wait holds the frame until its last byte has crossed the shaped link.
func (p *shapedPending) Wait(ctx context.Context) (Header, error) {
	h, err := p.inner.Wait(ctx)
	if err != nil || p.peer < 0 || p.peer >= len(p.s.lat) {
		return h, err
	}
	if lat := p.s.lat[p.peer]; lat > 0 || h.Time != 0 {
		if err := sleepUntil(ctx, time.Unix(0, h.Time).Add(lat)); err != nil {
			return h, fmt.Errorf("frame from rank %d held by link latency: %w", p.peer, err)
		}
	}
	return h, nil
}

func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
