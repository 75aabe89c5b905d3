// Package collective moves float32 buffers between the ranks of a training job:
// transports (in-process, TCP, shaped), communicators over groups of ranks, and
// collective operations (all-reduce, reduce-scatter, all-gather, broadcast,
// all-to-all(-v), send/recv, bidirectional ring exchange), each synchronous and
// asynchronous.
//
// Safety contract: every operation runs under a deadline (the caller's context
// or Config.Timeout), every frame carries (group, sequence number, step, op,
// count) so ranks that disagree about which collective they are in get a
// *DesyncError naming both sides instead of wrong numbers, and a dead or silent
// peer yields an error naming the peer and the operation on every surviving
// rank. Payloads are float32 in the host's byte order; the wire format assumes
// little-endian hosts (amd64, arm64).
//
// The package imports nothing of the project and must not know about models,
// meshes or training: callers build their groups with Sub and hand it
// buffers. Design: docs/collectives.md.
package collective

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Op identifies the operation a frame belongs to. It is part of every frame so
// a receiver can tell a desynchronised peer from a slow one.
type Op uint8

// Operations. Values are part of the wire format: append only.
const (
	OpInvalid Op = iota
	OpAllReduce
	OpReduceScatter
	OpAllGather
	OpBroadcast
	OpAllToAll
	OpAllToAllV
	OpSendRecv
	OpRingExchange
	OpBarrier
	OpAbort // payload: UTF-8 reason; fails every receive of (group, seq)
	opLimit
)

var opNames = [...]string{"invalid", "allreduce", "reducescatter", "allgather", "broadcast",
	"alltoall", "alltoallv", "sendrecv", "ringexchange", "barrier", "abort"}

func (o Op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Tag is the matching key of a frame together with its sender: a receive waits
// for the frame from one peer with exactly this tag. Group separates
// communicators, Seq orders the operations of one communicator, Step numbers
// the messages of one operation on one link.
type Tag struct {
	Group uint64
	Seq   uint64
	Step  uint32
}

// Header is the fixed part of a frame.
type Header struct {
	Op    Op
	Tag   Tag
	Count uint64 // op-defined size signature (elements); both sides must agree
	Len   uint64 // payload bytes that follow the header
	Time  int64  // sender's wall clock at send (unix ns); used by shaped links, else 0
}

func (h Header) String() string {
	return fmt.Sprintf("%s(group %016x seq %d step %d count %d, %d bytes)",
		h.Op, h.Tag.Group, h.Tag.Seq, h.Tag.Step, h.Count, h.Len)
}

// HeaderSize is the encoded size of a Header.
//
// Layout (little endian): magic u32 | op u8 | reserved u8,u16 (zero) | step u32 |
// reserved u32 (zero) | group u64 | seq u64 | count u64 | len u64 | time i64.
const HeaderSize = 56

const frameMagic = 0x3143544d // "MTC1"

// DefaultMaxPayload bounds the payload a receiver accepts in one frame
// (TCPConfig.MaxPayload) unless told less, so a corrupt length cannot make
// it allocate without limit; callers that know their largest message set
// that instead (training does).
const DefaultMaxPayload = 1 << 32

// ErrBadFrame is wrapped by every frame decoding error.
var ErrBadFrame = errors.New("bad frame")

// EncodeHeader writes h into b, which must hold HeaderSize bytes.
func EncodeHeader(b []byte, h Header) {
	_ = b[HeaderSize-1]
	binary.LittleEndian.PutUint32(b[0:], frameMagic)
	b[4] = byte(h.Op)
	b[5] = 0
	binary.LittleEndian.PutUint16(b[6:], 0)
	binary.LittleEndian.PutUint32(b[8:], h.Tag.Step)
	binary.LittleEndian.PutUint32(b[12:], 0)
	binary.LittleEndian.PutUint64(b[16:], h.Tag.Group)
	binary.LittleEndian.PutUint64(b[24:], h.Tag.Seq)
	binary.LittleEndian.PutUint64(b[32:], h.Count)
	binary.LittleEndian.PutUint64(b[40:], h.Len)
	binary.LittleEndian.PutUint64(b[48:], uint64(h.Time))
}

// DecodeHeader parses and validates one header. maxPayload bounds Len.
func DecodeHeader(b []byte, maxPayload uint64) (Header, error) {
	var h Header
	if len(b) < HeaderSize {
		return h, fmt.Errorf("%w: header is %d bytes, want %d", ErrBadFrame, len(b), HeaderSize)
	}
	if m := binary.LittleEndian.Uint32(b[0:]); m != frameMagic {
		return h, fmt.Errorf("%w: magic %#08x, want %#08x", ErrBadFrame, m, frameMagic)
	}
	h.Op = Op(b[4])
	if h.Op == OpInvalid || h.Op >= opLimit {
		return h, fmt.Errorf("%w: unknown op %d", ErrBadFrame, b[4])
	}
	if b[5] != 0 || binary.LittleEndian.Uint16(b[6:]) != 0 || binary.LittleEndian.Uint32(b[12:]) != 0 {
		return h, fmt.Errorf("%w: reserved bytes not zero", ErrBadFrame)
	}
	h.Tag.Step = binary.LittleEndian.Uint32(b[8:])
	h.Tag.Group = binary.LittleEndian.Uint64(b[16:])
	h.Tag.Seq = binary.LittleEndian.Uint64(b[24:])
	h.Count = binary.LittleEndian.Uint64(b[32:])
	h.Len = binary.LittleEndian.Uint64(b[40:])
	h.Time = int64(binary.LittleEndian.Uint64(b[48:]))
	if h.Len > maxPayload {
		return h, fmt.Errorf("%w: payload of %d bytes exceeds the limit of %d", ErrBadFrame, h.Len, maxPayload)
	}
	if h.Op == OpAbort && h.Len > maxAbortReason {
		return h, fmt.Errorf("%w: abort reason of %d bytes exceeds %d", ErrBadFrame, h.Len, maxAbortReason)
	}
	return h, nil
}

const maxAbortReason = 4096

// ReadFrame reads one whole frame (header and payload) from r. It is the
// reference decoder for a frame stream; the TCP transport reads payloads
// straight into posted buffers instead, with the same validation.
func ReadFrame(r io.Reader, maxPayload uint64) (Header, []byte, error) {
	var hb [HeaderSize]byte
	if _, err := io.ReadFull(r, hb[:]); err != nil {
		return Header{}, nil, err
	}
	h, err := DecodeHeader(hb[:], maxPayload)
	if err != nil {
		return h, nil, err
	}
	// Grow in bounded pieces so a lying length on a short stream costs at most
	// what the stream actually delivers.
	var payload []byte
	for uint64(len(payload)) < h.Len {
		n := h.Len - uint64(len(payload))
		if n > 1<<20 {
			n = 1 << 20
		}
		start := len(payload)
		payload = append(payload, make([]byte, n)...)
		if _, err := io.ReadFull(r, payload[start:]); err != nil {
			return h, nil, fmt.Errorf("%w: payload truncated after %d of %d bytes: %v", ErrBadFrame, start, h.Len, err)
		}
	}
	return h, payload, nil
}

// WriteFrame writes one frame with the given payload parts (h.Len is set).
func WriteFrame(w io.Writer, h Header, parts ...[]byte) error {
	var hb [HeaderSize]byte
	h.Len = 0
	for _, p := range parts {
		h.Len += uint64(len(p))
	}
	EncodeHeader(hb[:], h)
	if _, err := w.Write(hb[:]); err != nil {
		return err
	}
	for _, p := range parts {
		if _, err := w.Write(p); err != nil {
			return err
		}
	}
	return nil
}
