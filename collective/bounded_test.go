//go:build linux

package collective

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"testing"
	"time"
)

// What a peer sends cannot make a rank allocate without bound: a length
// beyond MaxPayload fails the link at its header, a length within it costs
// what actually arrives (unexpected payloads are read in pieces), and frames
// ahead of their receives are capped per peer (MaxBuffered). Each failure
// is a *PeerError naming the peer. Every test runs in every mode of
// tcpModes: the reader goroutines are what cluster's data plane uses.

// rawPeer is rank 0's transport in mode m, with the given limits, whose
// peer (rank 1) is the returned raw connection.
func rawPeer(t *testing.T, m int, maxPayload, maxBuffered uint64) (*tcpTransport, *net.TCPConn) {
	t.Helper()
	a, b := loopbackPair(t)
	mode := tcpModes[m]
	tr, err := newTCPTransport(TCPConfig{Rank: 0, Addrs: []string{"", ""}, MaxPayload: maxPayload, MaxBuffered: maxBuffered,
		ProgressEngine: mode.engine, SpinWait: mode.spin, SpinYield: mode.yield}, []*net.TCPConn{nil, a})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr, b
}

// rawHeader encodes a send-receive header with an arbitrary length field.
func rawHeader(step uint32, length uint64) []byte {
	hb := make([]byte, HeaderSize)
	EncodeHeader(hb, Header{Op: OpSendRecv, Tag: Tag{Group: 5, Seq: 1, Step: step}, Count: 1})
	binary.LittleEndian.PutUint64(hb[40:], length)
	return hb
}

// waitPeerError waits (posting a receive nothing will match) until the
// link to rank 1 fails, and returns the error.
func waitPeerError(t *testing.T, tr *tcpTransport) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	never := Header{Op: OpSendRecv, Tag: Tag{Group: 1 << 62, Seq: 1}}
	_, err := tr.Recv(ctx, 1, never, nil)
	var pe *PeerError
	if !errors.As(err, &pe) || pe.Peer != 1 {
		t.Fatalf("want a *PeerError naming rank 1, got %v", err)
	}
	return err
}

// allocated is the bytes allocated by the process so far.
func allocated() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc
}

// A length field of 2^32−1 over a training-sized MaxPayload fails the link
// at the header; under the default limits (which admit it) the rank
// allocates for the bytes that came, not for the length.
func TestTCPModesHugeLength(t *testing.T) {
	for m, mode := range tcpModes {
		t.Run(mode.name+"/limit", func(t *testing.T) {
			tr, peer := rawPeer(t, m, 1<<20, 0)
			before := allocated()
			if _, err := peer.Write(rawHeader(0, 1<<32-1)); err != nil {
				t.Fatal(err)
			}
			err := waitPeerError(t, tr)
			if !errors.Is(err, ErrBadFrame) {
				t.Fatalf("want ErrBadFrame, got %v", err)
			}
			if d := allocated() - before; d > 4<<20 {
				t.Fatalf("allocated %d bytes for a refused header", d)
			}
		})
		t.Run(mode.name+"/default", func(t *testing.T) {
			tr, peer := rawPeer(t, m, 0, 0)
			before := allocated()
			sent := append(rawHeader(0, 1<<32-1), make([]byte, 3<<20)...)
			if _, err := peer.Write(sent); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond) // the rank reads what came
			peer.Close()
			err := waitPeerError(t, tr)
			if d := allocated() - before; d > 32<<20 {
				t.Fatalf("allocated %d bytes for a frame that sent %d: %v", d, len(sent), err)
			}
		})
	}
}

// 10,000 frames nobody receives, from one peer: once they exceed
// MaxBuffered the link fails with a *BufferLimitError naming the peer, and
// the rank holds no more than the limit; with room for them all, every one
// is delivered and the charge goes back to zero.
func TestTCPModesUnexpectedFlood(t *testing.T) {
	const frames = 10000
	for m, mode := range tcpModes {
		for _, size := range []int{0, 1000} {
			var stream []byte
			for i := range frames {
				stream = append(stream, rawHeader(uint32(i), uint64(size))...)
				stream = append(stream, make([]byte, size)...)
			}
			flood := func(peer *net.TCPConn) {
				go func() { _, _ = peer.Write(stream) }()
			}
			t.Run(fmt.Sprintf("%s/%dB/capped", mode.name, size), func(t *testing.T) {
				const limit = 1 << 20
				tr, peer := rawPeer(t, m, 1<<16, limit)
				before := allocated()
				flood(peer)
				err := waitPeerError(t, tr)
				var be *BufferLimitError
				if !errors.As(err, &be) || be.Peer != 1 || be.Limit != limit {
					t.Fatalf("want a *BufferLimitError for rank 1 at %d bytes, got %v", limit, err)
				}
				tr.in.mu.Lock()
				kept := len(tr.in.arrived)
				tr.in.mu.Unlock()
				if kept == 0 || kept >= frames {
					t.Fatalf("%d of %d frames kept", kept, frames)
				}
				d := allocated() - before
				if d > 4*limit+4<<20 {
					t.Fatalf("allocated %d bytes under a limit of %d: %v", d, limit, err)
				}
				t.Logf("link failed after %d frames kept, %d bytes allocated: %v", kept, d, err)
			})
			t.Run(fmt.Sprintf("%s/%dB/room", mode.name, size), func(t *testing.T) {
				tr, peer := rawPeer(t, m, 1<<16, 64<<20)
				flood(peer)
				ctx := testCtx(t, 10*time.Second)
				want := func(i int) Header {
					return Header{Op: OpSendRecv, Tag: Tag{Group: 5, Seq: 1, Step: uint32(i)}, Count: 1}
				}
				// The last frame first: then all the others are early.
				dst := make([]byte, size)
				if _, err := tr.Recv(ctx, 1, want(frames-1), dst); err != nil {
					t.Fatal(err)
				}
				for i := range frames - 1 {
					if _, err := tr.Recv(ctx, 1, want(i), dst); err != nil {
						t.Fatalf("frame %d: %v", i, err)
					}
				}
				tr.in.mu.Lock()
				left := tr.in.early[1]
				tr.in.mu.Unlock()
				if left != 0 {
					t.Fatalf("%d bytes still charged to rank 1 after every frame was received", left)
				}
			})
		}
	}
}

// Abort reasons are kept for the transport's life: they count against the
// same limit, so a peer cannot grow the aborted set without bound either.
func TestTCPModesAbortFlood(t *testing.T) {
	for m, mode := range tcpModes {
		t.Run(mode.name, func(t *testing.T) {
			tr, peer := rawPeer(t, m, 1<<16, 1<<20)
			var stream []byte
			for i := range 10000 {
				hb := make([]byte, HeaderSize)
				reason := []byte("no reason at all, many times over")
				EncodeHeader(hb, Header{Op: OpAbort, Tag: Tag{Group: 6, Seq: uint64(i)}, Len: uint64(len(reason))})
				stream = append(append(stream, hb...), reason...)
			}
			go func() { _, _ = peer.Write(stream) }()
			err := waitPeerError(t, tr)
			var be *BufferLimitError
			if !errors.As(err, &be) {
				t.Fatalf("want a *BufferLimitError, got %v", err)
			}
			tr.in.mu.Lock()
			n := len(tr.in.aborted)
			tr.in.mu.Unlock()
			if n == 0 || n >= 10000 {
				t.Fatalf("%d aborts kept", n)
			}
		})
	}
}

// DialMesh refuses a MaxBuffered that cannot hold one frame of MaxPayload.
func TestDialMeshBufferedBelowPayload(t *testing.T) {
	_, err := DialMesh(context.Background(), nil, TCPConfig{Rank: 0, Addrs: []string{"x"}, Token: "t", MaxPayload: 1 << 20, MaxBuffered: 1 << 20})
	if err == nil {
		t.Fatal("accepted MaxBuffered = MaxPayload")
	}
}
