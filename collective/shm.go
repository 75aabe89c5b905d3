package collective

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
)

// Shared memory between two ranks of one host (docs/collectives.md#shared-memory).
//
// After the TCP handshake every pair negotiates, over its authenticated
// connection, whether its frames go through a pair of rings in shared
// memory. The acceptor (the lower rank) offers; the dialer answers:
//
//	A → D  offer:  magic "MTS1" u32 | ring bytes u64 | cookie [16] | name len u16 | name
//	D → A  answer: u8 (0: use the rings, else stay on TCP)
//
// An empty name is no offer (the ranks are on different hosts, by
// TCPConfig.Hosts, or the acceptor could not create the file). The dialer
// accepts only a file it can open whose header holds the cookie of the
// offer, so ranks that the plan puts on one host but that do not share
// /dev/shm stay on TCP. The acceptor unlinks the file once answered: both
// hold it mapped, nothing is left behind. The connection then carries no
// bytes; it stays open as the peer's liveness: its close is the peer's death
// (frames already in the ring are still delivered).
const (
	shmMagic   = 0x3153544d // "MTS1"
	shmMaxName = 128
	// DefaultShmRing is the size of each direction's ring.
	DefaultShmRing = 4 << 20
	shmMinRing     = 4 << 10
	shmMaxRing     = 1 << 30
)

// ShmDisabled, as TCPConfig.ShmRing, keeps every pair on TCP.
const ShmDisabled = -1

// sameHost reports whether ranks a and b are on one host by hosts (empty
// or too short: unknown, so not).
func sameHost(hosts []string, a, b int) bool {
	return a < len(hosts) && b < len(hosts) && hosts[a] != "" && hosts[a] == hosts[b]
}

// ShmBudget bounds the shared memory of the rings a rank offers: with k
// peers on its host, a default ring is the largest power of two with
// k·2·ring <= ShmBudget (at most DefaultShmRing, at least 4 KiB). The
// rings of a host's n ranks then take about n·ShmBudget/2 of /dev/shm
// (a full mesh of 4 MiB rings would take n·(n-1)·4 MiB: 64 GiB for 128
// ranks on one host).
const ShmBudget = 32 << 20

// shmRingBytes is cfg's ring size per direction, 0 when disabled.
func shmRingBytes(cfg TCPConfig) int {
	switch {
	case cfg.ShmRing < 0:
		return 0
	case cfg.ShmRing > 0:
		return cfg.ShmRing
	}
	k := 0
	for p := range cfg.Hosts {
		if p != cfg.Rank && sameHost(cfg.Hosts, cfg.Rank, p) {
			k++
		}
	}
	ring := DefaultShmRing
	for ring > shmMinRing && k*2*ring > ShmBudget {
		ring /= 2
	}
	return ring
}

// checkShmRing validates TCPConfig.ShmRing.
func checkShmRing(n int) error {
	if n == 0 || n == ShmDisabled {
		return nil
	}
	if n < shmMinRing || n > shmMaxRing || n&(n-1) != 0 {
		return fmt.Errorf("shared-memory ring of %d bytes: want a power of two in [%d, %d] (or %d to disable)", n, shmMinRing, shmMaxRing, ShmDisabled)
	}
	return nil
}

// negotiateAll runs negotiateShm with every peer at once and returns the
// shared-memory link of each (nil: TCP).
func negotiateAll(ctx context.Context, conns []*net.TCPConn, cfg TCPConfig) ([]*shmLink, error) {
	links := make([]*shmLink, len(conns))
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for p, c := range conns {
		if c == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			links[p], errs[p] = negotiateShm(ctx, c, cfg, p)
		}()
	}
	wg.Wait()
	for p, err := range errs {
		if err != nil {
			for _, l := range links {
				if l != nil {
					l.unmap()
				}
			}
			return nil, fmt.Errorf("rank %d: %w", p, err)
		}
	}
	return links, nil
}

// negotiateShm runs the offer/answer on c with peer and returns the rings
// to use, or nil to stay on TCP. An error is a broken connection.
func negotiateShm(ctx context.Context, c *net.TCPConn, cfg TCPConfig, peer int) (*shmLink, error) {
	defer boundHandshake(ctx, c)()
	want := sameHost(cfg.Hosts, cfg.Rank, peer) && shmRingBytes(cfg) > 0
	if peer > cfg.Rank {
		return offerShm(c, want, shmRingBytes(cfg))
	}
	return answerShm(c, want)
}

// offerShm is the acceptor's side.
func offerShm(c *net.TCPConn, want bool, ring int) (*shmLink, error) {
	var f *shmFile
	if want {
		var err error
		if f, err = createShm(ring); err != nil {
			f = nil // no offer: this pair stays on TCP
		}
	}
	msg := make([]byte, 30, 30+shmMaxName)
	binary.LittleEndian.PutUint32(msg[0:], shmMagic)
	if f != nil {
		defer f.unlink()
		binary.LittleEndian.PutUint64(msg[4:], uint64(ring))
		copy(msg[12:28], f.cookie[:])
		binary.LittleEndian.PutUint16(msg[28:], uint16(len(f.name)))
		msg = append(msg, f.name...)
	}
	if _, err := c.Write(msg); err != nil {
		f.release()
		return nil, fmt.Errorf("shared memory: send offer: %w", err)
	}
	var ans [1]byte
	if _, err := io.ReadFull(c, ans[:]); err != nil {
		f.release()
		return nil, fmt.Errorf("shared memory: no answer to the offer: %w", err)
	}
	if f == nil || ans[0] != 0 {
		f.release()
		return nil, nil
	}
	return f.link(true), nil
}

// answerShm is the dialer's side.
func answerShm(c *net.TCPConn, want bool) (*shmLink, error) {
	var hdr [30]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return nil, fmt.Errorf("shared memory: no offer: %w", err)
	}
	if m := binary.LittleEndian.Uint32(hdr[0:]); m != shmMagic {
		return nil, fmt.Errorf("shared memory: offer has magic %#x, want %#x", m, shmMagic)
	}
	ring := binary.LittleEndian.Uint64(hdr[4:])
	var cookie [16]byte
	copy(cookie[:], hdr[12:28])
	nl := int(binary.LittleEndian.Uint16(hdr[28:]))
	if nl > shmMaxName {
		return nil, fmt.Errorf("shared memory: offer names a file of %d bytes, at most %d", nl, shmMaxName)
	}
	name := make([]byte, nl)
	if _, err := io.ReadFull(c, name); err != nil {
		return nil, fmt.Errorf("shared memory: offer's name: %w", err)
	}
	var f *shmFile
	if want && nl > 0 {
		var err error
		if f, err = openShm(string(name), ring, cookie); err != nil {
			f = nil // another host's file, or none: stay on TCP
		}
	}
	ans := []byte{1}
	if f != nil {
		ans[0] = 0
	}
	if _, err := c.Write(ans); err != nil {
		f.release()
		return nil, fmt.Errorf("shared memory: send answer: %w", err)
	}
	if f == nil {
		return nil, nil
	}
	return f.link(false), nil
}

// errShmCorrupt marks ring positions that no writer following the
// protocol leaves: the peer wrote over the shared control words.
var errShmCorrupt = errors.New("shared-memory ring corrupt")

// shmPrefix starts every ring file's path; then come the creating
// process's id (8 hex digits, so a later process can remove the files of
// one that died before it unlinked them: sweepShm), a dash and 32 random
// hex digits.
const shmPrefix = "/dev/shm/moetrain-"

// shmFileName is the path of a ring file of process pid with random hex.
func shmFileName(pid int, random string) string {
	return fmt.Sprintf("%s%08x-%s", shmPrefix, uint32(pid), random)
}

// shmFilePID returns the creator of a ring file named by path, and whether
// path is one createShm makes (so a peer cannot have this rank open
// another file).
func shmFilePID(path string) (int, bool) {
	rest, ok := strings.CutPrefix(path, shmPrefix)
	if !ok || len(rest) != 8+1+32 || rest[8] != '-' {
		return 0, false
	}
	for i, r := range rest {
		if i != 8 && !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return 0, false
		}
	}
	pid, err := strconv.ParseUint(rest[:8], 16, 32)
	return int(pid), err == nil
}

// validShmName reports whether path is one createShm makes.
func validShmName(path string) bool {
	_, ok := shmFilePID(path)
	return ok
}

// startShmSend is startSend (progress engine) for a shared-memory peer: a
// frame that fits in the ring now is written at once; otherwise a
// goroutine writes it, and Wait bounds it by its context (an expired
// context fails the link, as a partly written frame would).
func (t *tcpTransport) startShmSend(p int, pc *tcpPeer, h Header, payload []byte) Pending {
	select {
	case pc.wlock <- struct{}{}:
		if pc.shm.room() >= uint64(HeaderSize+len(payload)) {
			// Room only grows while this rank holds wlock: no wait.
			err := t.shmWrite(context.Background(), p, pc, h, payload)
			<-pc.wlock
			return failedPending{err}
		}
		<-pc.wlock
	default:
	}
	s := &shmSend{fin: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() {
		defer close(s.fin)
		defer cancel()
		s.err = t.Send(ctx, p, h, payload)
	}()
	return s
}

// shmWrite writes one frame to pc's ring; callers hold pc.wlock.
func (t *tcpTransport) shmWrite(ctx context.Context, p int, pc *tcpPeer, h Header, parts ...[]byte) error {
	if err := t.in.peerFailed(p); err != nil {
		return err
	}
	pc.encodeHeader(h, parts)
	if err := pc.shm.writeFrame(ctx, pc.hbuf[:], parts); err != nil {
		// A partly written frame leaves the ring unusable.
		return &PeerError{Peer: p, Err: t.linkDown(p, fmt.Errorf("write: %w", err))}
	}
	return nil
}

// shmSend is a frame being written to a ring by a goroutine of its own.
type shmSend struct {
	fin    chan struct{}
	err    error
	cancel context.CancelFunc
}

func (s *shmSend) Wait(ctx context.Context) (Header, error) {
	select {
	case <-s.fin:
		return Header{}, s.err
	case <-ctx.Done():
		s.cancel()
		<-s.fin
		return Header{}, s.err
	}
}

func (s *shmSend) done() bool {
	select {
	case <-s.fin:
		return true
	default:
		return false
	}
}
