package spsa

import (
	"context"
	"fmt"
	"sync/atomic"
	"unsafe"

	"github.com/moetrain/moetrain/collective"
)

// Exchange is one step's all-gather of the workers' payloads: each member
// contributes the same number of bytes and receives every member's, in
// member order. A runner may implement it over a mesh (CommExchange) or a
// coordinator that relays the payloads.
type Exchange interface {
	// Members are the worker identifiers of the members, in the order
	// AllGather places their payloads; constant for the Exchange's life
	// (a membership change builds a new Exchange between steps).
	Members() []uint32
	// AllGather sends mine and fills all (len(Members())·len(mine) bytes)
	// with every member's payload. It returns by ctx's deadline at the
	// latest.
	AllGather(ctx context.Context, mine, all []byte) error
	// WireBytes is what this member has sent so far, framing included.
	WireBytes() int64
}

// CountingTransport wraps a collective transport and counts what this rank
// sends: every frame's HeaderSize bytes of header and its payload (not the
// TCP/IP headers below, which docs/algorithms/spsa.md estimates).
type CountingTransport struct {
	collective.Transport
	bytes, frames atomic.Int64
}

// NewCountingTransport wraps t.
func NewCountingTransport(t collective.Transport) *CountingTransport {
	return &CountingTransport{Transport: t}
}

// Send counts the frame and sends it.
func (c *CountingTransport) Send(ctx context.Context, peer int, h collective.Header, parts ...[]byte) error {
	n := collective.HeaderSize
	for _, p := range parts {
		n += len(p)
	}
	c.bytes.Add(int64(n))
	c.frames.Add(1)
	return c.Transport.Send(ctx, peer, h, parts...)
}

// Bytes and Frames are the totals sent so far.
func (c *CountingTransport) Bytes() int64  { return c.bytes.Load() }
func (c *CountingTransport) Frames() int64 { return c.frames.Load() }

// CommExchange is Exchange over the world communicator of a (counted)
// collective transport: one all-gather per step. The collective moves
// float32 buffers, so a payload travels padded to a multiple of 4 bytes,
// as raw bytes (no arithmetic touches them).
type CommExchange struct {
	t       *CountingTransport
	comm    *collective.Comm
	members []uint32
	send    []float32
	recv    []float32
}

// NewCommExchange builds the exchange of the mesh t, whose rank r is worker
// members[r], with the collectives' default configuration. Identifiers
// must be distinct.
func NewCommExchange(t collective.Transport, members []uint32) (*CommExchange, error) {
	return NewCommExchangeConfig(t, members, collective.Config{})
}

// NewCommExchangeConfig is NewCommExchange with the collectives configured
// by cfg (their timeout).
func NewCommExchangeConfig(t collective.Transport, members []uint32, cfg collective.Config) (*CommExchange, error) {
	if len(members) != t.Size() {
		return nil, fmt.Errorf("spsa: exchange: %d member identifiers for a mesh of %d ranks", len(members), t.Size())
	}
	seen := make(map[uint32]bool, len(members))
	for r, id := range members {
		if seen[id] {
			return nil, fmt.Errorf("spsa: exchange: worker identifier %d repeated (rank %d)", id, r)
		}
		seen[id] = true
	}
	ct := NewCountingTransport(t)
	return &CommExchange{t: ct, comm: collective.NewWorldConfig(ct, cfg), members: append([]uint32(nil), members...)}, nil
}

// Comm is the (counted) world communicator the exchange runs on, for a
// runner's setup collectives; what they send counts in WireBytes.
func (x *CommExchange) Comm() *collective.Comm { return x.comm }

// Members implements Exchange.
func (x *CommExchange) Members() []uint32 { return x.members }

// WireBytes implements Exchange.
func (x *CommExchange) WireBytes() int64 { return x.t.Bytes() }

// Frames is the number of frames this member has sent.
func (x *CommExchange) Frames() int64 { return x.t.Frames() }

// AllGather implements Exchange.
func (x *CommExchange) AllGather(ctx context.Context, mine, all []byte) error {
	n := len(x.members)
	if len(all) != n*len(mine) {
		return fmt.Errorf("spsa: exchange: %d bytes for %d members of %d bytes", len(all), n, len(mine))
	}
	words := (len(mine) + 3) / 4
	if len(x.send) != words {
		x.send, x.recv = make([]float32, words), make([]float32, n*words)
	}
	sb := f32bytes(x.send)
	copy(sb, mine)
	clear(sb[len(mine):])
	if err := x.comm.AllGather(ctx, x.send, x.recv); err != nil {
		return fmt.Errorf("spsa: exchange: %w", err)
	}
	rb := f32bytes(x.recv)
	for r := range n {
		copy(all[r*len(mine):(r+1)*len(mine)], rb[r*4*words:])
	}
	return nil
}

// Close closes the transport.
func (x *CommExchange) Close() error { return x.t.Close() }

// f32bytes views x's memory as bytes.
func f32bytes(x []float32) []byte {
	if len(x) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(x))), 4*len(x))
}
