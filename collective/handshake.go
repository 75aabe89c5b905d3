package collective

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Handshake (dialer D of rank d, acceptor A of rank a, world size n, token T):
//
//	D → A  hello:   magic "MTH1" | d u32 | n u32 | nonceD [16]
//	A → D  proof:   a u32 | nonceA [16] | HMAC_T("acc" | nonceD | nonceA | a | n)
//	D → A  proof:   HMAC_T("dial" | nonceA | nonceD | d | n)
//	A → D  verdict: status u8 (0 ok) | len u16 | reason
//
// Each side proves it knows T without sending it, and the MACs bind the
// ranks and world size, so a process of another job or a replayed exchange
// is refused. The dialer checks that the acceptor is the rank it dialled.
const (
	helloMagic = 0x3148544d // "MTH1"
	nonceSize  = 16
	macSize    = sha256.Size
)

// handshakeTime bounds the accepting side of one handshake, so strangers
// cannot hold it. The dialing side waits up to its context's deadline
// instead: the rank it dialled may accept late (it is still loading when
// many ranks share few cores), and the dialer trusts the address it was
// given. A variable for tests.
var handshakeTime = 10 * time.Second

// ErrRefused is wrapped by handshake refusals.
var ErrRefused = errors.New("connection refused by handshake")

func mac(token string, label string, n1, n2 []byte, rank, size int) []byte {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte(label))
	m.Write(n1)
	m.Write(n2)
	var b [8]byte
	binary.LittleEndian.PutUint32(b[0:], uint32(rank))
	binary.LittleEndian.PutUint32(b[4:], uint32(size))
	m.Write(b[:])
	return m.Sum(nil)
}

func handshakeDeadline(ctx context.Context, c net.Conn) {
	dl := time.Now().Add(handshakeTime)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	_ = c.SetDeadline(dl)
}

// boundHandshake bounds the exchanges on c by ctx's deadline (else
// handshakeTime) and aborts them when ctx ends; the returned func clears
// the deadline again unless ctx ended first.
func boundHandshake(ctx context.Context, c *net.TCPConn) (clear func()) {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(handshakeTime)
	}
	_ = c.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	return func() {
		if stop() {
			_ = c.SetDeadline(time.Time{})
		}
	}
}

func dialHandshake(ctx context.Context, c *net.TCPConn, want int, cfg TCPConfig) error {
	defer boundHandshake(ctx, c)()
	n := len(cfg.Addrs)
	var hello [12 + nonceSize]byte
	binary.LittleEndian.PutUint32(hello[0:], helloMagic)
	binary.LittleEndian.PutUint32(hello[4:], uint32(cfg.Rank))
	binary.LittleEndian.PutUint32(hello[8:], uint32(n))
	nonceD := hello[12:]
	if _, err := rand.Read(nonceD); err != nil {
		return fmt.Errorf("handshake: nonce: %w", err)
	}
	if _, err := c.Write(hello[:]); err != nil {
		return fmt.Errorf("handshake: send hello: %w", err)
	}
	var proof [4 + nonceSize + macSize]byte
	if _, err := io.ReadFull(c, proof[:]); err != nil {
		return fmt.Errorf("handshake: no proof from the acceptor (wrong address, or it refused us): %w", err)
	}
	a := int(binary.LittleEndian.Uint32(proof[0:]))
	nonceA := proof[4 : 4+nonceSize]
	if !hmac.Equal(proof[4+nonceSize:], mac(cfg.Token, "acc", nonceD, nonceA, a, n)) {
		return fmt.Errorf("%w: the process at %s does not hold this job's token (or has another world size)", ErrRefused, c.RemoteAddr())
	}
	if a != want {
		return fmt.Errorf("%w: the process at %s is rank %d, expected rank %d", ErrRefused, c.RemoteAddr(), a, want)
	}
	if _, err := c.Write(mac(cfg.Token, "dial", nonceA, nonceD, cfg.Rank, n)); err != nil {
		return fmt.Errorf("handshake: send proof: %w", err)
	}
	var verdict [3]byte
	if _, err := io.ReadFull(c, verdict[:]); err != nil {
		return fmt.Errorf("handshake: no verdict: %w", err)
	}
	if verdict[0] != 0 {
		reason := make([]byte, binary.LittleEndian.Uint16(verdict[1:]))
		_, _ = io.ReadFull(c, reason)
		return fmt.Errorf("%w: rank %d says: %s", ErrRefused, want, reason)
	}
	return nil
}

// acceptHandshake authenticates a dialer and returns its rank; it refuses
// (with a reason sent back) wrong tokens and ranks that must not dial us.
func acceptHandshake(ctx context.Context, c net.Conn, cfg TCPConfig) (int, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return -1, errors.New("not a TCP connection")
	}
	tuneConn(tc, cfg)
	handshakeDeadline(ctx, c)
	defer c.SetDeadline(time.Time{})
	n := len(cfg.Addrs)
	var hello [12 + nonceSize]byte
	if _, err := io.ReadFull(c, hello[:]); err != nil {
		return -1, fmt.Errorf("handshake: reading hello: %w", err)
	}
	if m := binary.LittleEndian.Uint32(hello[0:]); m != helloMagic {
		return -1, fmt.Errorf("%w: not a moetrain data-plane peer (magic %#x)", ErrRefused, m)
	}
	d := int(binary.LittleEndian.Uint32(hello[4:]))
	nonceD := hello[12:]
	var proof [4 + nonceSize + macSize]byte
	binary.LittleEndian.PutUint32(proof[0:], uint32(cfg.Rank))
	nonceA := proof[4 : 4+nonceSize]
	if _, err := rand.Read(nonceA); err != nil {
		return -1, fmt.Errorf("handshake: nonce: %w", err)
	}
	copy(proof[4+nonceSize:], mac(cfg.Token, "acc", nonceD, nonceA, cfg.Rank, n))
	if _, err := c.Write(proof[:]); err != nil {
		return -1, fmt.Errorf("handshake: send proof: %w", err)
	}
	var dm [macSize]byte
	if _, err := io.ReadFull(c, dm[:]); err != nil {
		return -1, fmt.Errorf("handshake: dialer claiming rank %d sent no proof (it may hold another token): %w", d, err)
	}
	refuse := func(reason string) (int, error) {
		var v [3]byte
		v[0] = 1
		if len(reason) > 1024 {
			reason = reason[:1024]
		}
		binary.LittleEndian.PutUint16(v[1:], uint16(len(reason)))
		_, _ = c.Write(append(v[:], reason...))
		return -1, fmt.Errorf("%w: dialer claiming rank %d: %s", ErrRefused, d, reason)
	}
	if !hmac.Equal(dm[:], mac(cfg.Token, "dial", nonceA, nonceD, d, n)) {
		return refuse("wrong job token (or another world size)")
	}
	if d <= cfg.Rank || d >= n {
		return refuse(fmt.Sprintf("rank %d must not dial rank %d (only ranks %d..%d do)", d, cfg.Rank, cfg.Rank+1, n-1))
	}
	if _, err := c.Write([]byte{0, 0, 0}); err != nil {
		return -1, fmt.Errorf("handshake: send verdict: %w", err)
	}
	return d, nil
}
