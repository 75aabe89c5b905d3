//go:build linux

package collective

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The progress engine's frame reader: bytes from a connection go through a
// small stage (headers, short payloads) or straight into the buffer of the
// receive they are for, and complete frames go to the inbox.

// read reads what pp has (up to readBudget) and hands complete frames to
// the inbox. The payload of a claimed receive goes straight into its buffer.
func (e *progressEngine) read(pp *enginePeer) bool {
	moved, drained := false, false
	budget := readBudget
	for budget > 0 {
		if !pp.inFrame {
			if pp.re-pp.rs >= HeaderSize {
				if !e.startFrame(pp) {
					return true
				}
				moved = true
				continue
			}
		} else {
			if pp.w == nil && !pp.abort {
				if pp.want >= lateClaimBytes {
					e.lateClaim(pp)
				}
				pp.room()
			}
			k := copy(pp.dst[pp.off:], pp.stage[pp.rs:pp.re])
			pp.rs += k
			pp.off += k
			if pp.off == pp.want {
				e.endFrame(pp)
				moved = true
				continue
			}
		}
		// A short read emptied the socket: another read would only return
		// EAGAIN, a system call for nothing.
		if drained {
			return moved
		}
		// Need more bytes: read the rest of a long payload in place,
		// anything else through the stage, and a header into an empty
		// stage with a guess at its payload's receive.
		var a, b []byte
		var n, want int
		var err error
		guessed := false
		direct := pp.inFrame && len(pp.dst)-pp.off >= stageBytes/2
		switch {
		case direct:
			// The stage is empty here (its bytes went to dst above), and
			// takes the next header in the same call: reading the payload
			// alone leaves a full read, which says nothing about whether
			// the socket is drained, and the next read is mostly EAGAIN.
			a = pp.dst[pp.off:]
			a = a[:min(len(a), budget)]
			b = pp.stage[:HeaderSize]
			pp.rs, pp.re = 0, 0
		case pp.rs == pp.re:
			pp.rs, pp.re = 0, 0
			if !pp.inFrame && pp.headerFirst {
				n, want, guessed, err = e.readSpeculative(pp)
			}
		case pp.rs > 0 && len(pp.stage)-pp.re < HeaderSize:
			pp.re = copy(pp.stage, pp.stage[pp.rs:pp.re])
			pp.rs = 0
		}
		if !guessed {
			if !direct {
				a = pp.stage[pp.re:]
				if !pp.inFrame && pp.headerFirst {
					a = a[:HeaderSize-(pp.re-pp.rs)]
				}
				a = a[:min(len(a), budget)]
			}
			n, err = rawReadv2(pp.fd, a, b)
			want = len(a) + len(b)
		}
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return moved
		}
		if err != nil || n == 0 {
			e.readFailed(pp, err)
			return true
		}
		moved = true
		budget -= n
		drained = n < want
		switch {
		case guessed: // readSpeculative placed the bytes
		case direct:
			got := min(n, len(a))
			pp.off += got
			pp.re = n - got // the next header, or more of this payload if the budget or a piece cut a
			if pp.off == pp.want {
				e.endFrame(pp)
			}
		default:
			pp.re += n
		}
	}
	return moved
}

// maxSpeculate bounds the receives read into before their header: if the
// header is another frame's, what was read into the receive's buffer moves
// to the stage, behind the header and before the next header's bytes.
const maxSpeculate = stageBytes - 2*HeaderSize

// readSpeculative reads the next header into the (empty) stage and, in the
// same call, the payload into the buffer of the receive the frame most
// likely is for (the oldest posted for the peer, if its buffer is scratch:
// see inbox.guess) and the header after it into the stage. If the header
// is that receive's, its frame is under way (or done); if not, the bytes
// are moved to the stage, in stream order, for the usual path, and the
// receive stays posted. The inbox stays locked from the guess until the
// header is checked, so that nobody takes the receive back meanwhile; the
// read does not block.
//
// guessed is false if there was no guess to make (nothing was read, the
// caller reads as usual); otherwise n and err are the read's, and want the
// most it could have returned. On an error nothing is placed and the inbox
// is unlocked: the caller handles it as any read's.
func (e *progressEngine) readSpeculative(pp *enginePeer) (n, want int, guessed bool, err error) {
	const H = HeaderSize
	in := e.t.in
	in.mu.Lock()
	defer in.mu.Unlock()
	w := in.guess(pp.id, maxSpeculate)
	if w == nil {
		return 0, 0, false, nil
	}
	want = 2*H + len(w.dst)
	n, err = rawReadv3(pp.fd, pp.stage[:H], w.dst, pp.stage[H:2*H])
	if err != nil || n == 0 {
		return n, want, true, err
	}
	if n >= H {
		h, derr := DecodeHeader(pp.stage[:H], e.t.maxPayload)
		if derr == nil && w.matches(h) {
			e.specHits++
			got := min(n-H, len(w.dst))
			pp.headerFirst = h.Len >= stageBytes/2
			pp.rs, pp.re = H, H+n-H-got // the next header's first bytes
			if got == len(w.dst) {
				// The whole frame: done under the same lock, so that a
				// Wait giving up meanwhile never finds it claimed.
				in.completeGuessed(w, h)
				return n, want, true, nil
			}
			in.claimGuessed(w, h)
			pp.h, pp.inFrame, pp.w, pp.dst, pp.want, pp.off, pp.abort = h, true, w, w.dst, len(w.dst), got, false
			return n, want, true, nil
		}
	}
	// Another frame (or only part of a header): header, then what went to
	// w.dst, then what went past it.
	e.specMisses++
	if k := min(max(n-H, 0), len(w.dst)); k > 0 {
		copy(pp.stage[H+k:], pp.stage[H:H+n-H-k])
		copy(pp.stage[H:], w.dst[:k])
	}
	pp.rs, pp.re = 0, n
	return n, want, true, nil
}

// readFailed takes pp's link down after a read returned err (nil: the peer
// closed the connection).
func (e *progressEngine) readFailed(pp *enginePeer, err error) {
	if err == nil {
		err = errors.New("connection closed by peer")
	}
	e.t.linkDown(pp.id, fmt.Errorf("read: %w", err))
	e.bury(pp)
}

// startFrame decodes the header at the front of the stage and picks where
// its payload goes. It returns false if the link failed.
func (e *progressEngine) startFrame(pp *enginePeer) bool {
	h, err := DecodeHeader(pp.stage[pp.rs:pp.rs+HeaderSize], e.t.maxPayload)
	if err != nil {
		e.t.linkDown(pp.id, err)
		e.bury(pp)
		return false
	}
	pp.rs += HeaderSize
	// An abort reason is kept as long as the transport (charged for good);
	// a payload without a receive is charged until it leaves the inbox.
	var w *waiter
	if h.Op == OpAbort {
		err = e.t.in.charge(pp.id, h.Len, true)
	} else {
		w, err = e.t.in.claimOrCharge(pp.id, h)
	}
	if err != nil {
		e.t.linkDown(pp.id, err)
		e.bury(pp)
		return false
	}
	pp.h, pp.inFrame, pp.off, pp.w, pp.abort, pp.want = h, true, 0, nil, false, int(h.Len)
	pp.headerFirst = h.Len >= stageBytes/2
	switch {
	case h.Op == OpAbort:
		pp.dst, pp.abort = make([]byte, h.Len), true
	case w != nil:
		pp.w, pp.dst = w, w.dst
	default:
		pp.dst = getBuf(min(pp.want, unexpectedPiece))
	}
	if pp.want == 0 {
		e.endFrame(pp)
	}
	return true
}

// room grows the buffer of a payload without a receive once its bytes so
// far fill it (see unexpectedPiece).
func (pp *enginePeer) room() {
	if pp.off == len(pp.dst) && pp.off < pp.want {
		pp.dst = growPiece(pp.dst, pp.off, pp.want)
	}
}

// lateClaimBytes: an unclaimed payload at least this long is switched to
// its receive if one is posted while it is being read, so that only the
// part read so far is copied (a peer a step ahead sends before this rank
// posts; the whole payload would otherwise be copied when it is done).
const lateClaimBytes = 64 << 10

// lateClaim moves the payload being buffered for pp's current frame into the
// receive posted for it meanwhile, if any.
func (e *progressEngine) lateClaim(pp *enginePeer) {
	w := e.t.in.claimCharged(pp.id, pp.h)
	if w == nil {
		return
	}
	copy(w.dst, pp.dst[:pp.off])
	putBuf(pp.dst)
	pp.w, pp.dst = w, w.dst
}

func (e *progressEngine) endFrame(pp *enginePeer) {
	pp.inFrame = false
	switch {
	case pp.abort:
		e.t.in.abort(pp.id, pp.h.Tag, string(pp.dst))
	case pp.w != nil:
		e.t.in.finish(pp.w, nil)
	default:
		e.t.in.store(pp.id, pp.h, pp.dst)
	}
	pp.dst, pp.w, pp.abort = nil, nil, false
}

// rawReadv2 is readv(2) into a then b (b may be empty) without telling the
// scheduler: on a nonblocking socket it never blocks, only copies. Through
// syscall.Syscall every call marks the P as in a system call, and with
// GOMAXPROCS 1 the runtime's monitor then hands the P to another thread,
// which the caller has to take back.
func rawReadv2(fd int, a, b []byte) (int, error) {
	iov := [2]unix.Iovec{iovec(a), iovec(b)}
	r, _, errno := unix.RawSyscall(unix.SYS_READV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), 2)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

// rawReadv3 is readv(2) into a, b, then c, raw for the same reason as rawReadv2.
func rawReadv3(fd int, a, b, c []byte) (int, error) {
	iov := [3]unix.Iovec{iovec(a), iovec(b), iovec(c)}
	r, _, errno := unix.RawSyscall(unix.SYS_READV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), 3)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

func iovec(b []byte) unix.Iovec {
	v := unix.Iovec{Base: unsafe.SliceData(b)}
	v.SetLen(len(b))
	return v
}
