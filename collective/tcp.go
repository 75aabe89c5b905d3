package collective

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// TCPConfig describes this rank's place in a TCP mesh.
type TCPConfig struct {
	Rank  int
	Addrs []string // data-plane address of every rank (what each rank's Listen bound)
	Token string   // job token; both ends of every connection must know it
	// DialTimeout bounds building the mesh when ctx has no deadline. Default 30s.
	DialTimeout time.Duration
	// SocketBuffer sets SO_SNDBUF and SO_RCVBUF when > 0. Default 0 leaves
	// Linux's autotuning on, which grows buffers beyond what an explicit
	// setting may (net.core.[rw]mem_max caps explicit sizes).
	SocketBuffer int
	// MaxPayload bounds one frame's payload: a longer frame fails its link
	// before anything is allocated for it. Training sets the largest
	// message its plan sends; default DefaultMaxPayload.
	MaxPayload uint64
	// MaxBuffered bounds what this rank keeps for one peer ahead of its
	// receives: the payloads of frames that arrive before their receive is
	// posted (plus a fixed cost per frame) and abort reasons. A peer that
	// sends more fails its link with a *BufferLimitError. Frames may
	// legitimately arrive early, so it must hold one of MaxPayload bytes
	// (DialMesh refuses less). Default: room for two such frames.
	MaxBuffered uint64
	// ProgressEngine moves bytes in the goroutines that wait for them, with
	// nonblocking system calls, instead of in a reader goroutine per
	// connection and blocking writes (see progressEngine; Linux only).
	ProgressEngine bool
	// SpinWait (progress engine only) is how long a waiter that finds no
	// bytes to move keeps trying before it blocks in poll(2): a peer that
	// answers within it costs no wake-up, at the price of a busy core.
	// Default 0 blocks at once; negative is the same as 0.
	SpinWait time.Duration
	// SpinYield (progress engine only) is for ranks that share cores (more
	// rank processes than cores): between tries the waiter yields the CPU
	// to other processes (sched_yield), as OpenMPI's mpi_yield_when_idle
	// does, so a spinning rank does not hold the core its peer needs.
	SpinYield bool
	// Congestion is the TCP congestion control of the connections this rank
	// dials: a comma-separated list of kernel names, the first accepted
	// wins (unprivileged processes may only choose those in
	// /proc/sys/net/ipv4/tcp_allowed_congestion_control; reno always is).
	// Default "" means DefaultCongestion; CongestionSystem keeps the
	// system's. Connections this rank accepts get the listener's (see
	// ListenCongestion).
	Congestion string
	// Hosts names the host of every rank (indexed like Addrs); may be nil.
	// A pair whose two entries are equal and not empty moves its frames
	// through rings in shared memory instead of its TCP connection, which
	// stays open as the peer's liveness (see negotiateShm); a pair that
	// cannot map the rings stays on TCP. With ProgressEngine, the engine
	// moves the TCP pairs' bytes and each shared-memory pair has a reader
	// goroutine.
	Hosts []string
	// ShmRing is the size of each direction's ring of a shared-memory pair:
	// a power of two of 4 KiB to 1 GiB; 0 means DefaultShmRing, ShmDisabled
	// keeps every pair on TCP.
	ShmRing int
}

// DefaultCongestion is the congestion control the mesh asks for unless told
// otherwise. Not BBR, the default of many distributions: without an fq
// qdisc BBR makes the kernel pace every connection with timers of its own
// (internal pacing), which costs CPU that ranks sharing a host's cores
// need (measured in
// docs/decisions.md#tcp-congestion-control-cubic-else-reno).
// The choice must be made before a connection exists: BBR turns pacing on
// when it starts, and a later switch leaves it on.
const DefaultCongestion = "cubic,reno"

// CongestionSystem, as TCPConfig.Congestion, keeps the system's default
// congestion control (net.ipv4.tcp_congestion_control).
const CongestionSystem = "system"

// CongestionChoice is the choice TCPConfig.Congestion's value stands for:
// DefaultCongestion for "", else the value itself.
func CongestionChoice(congestion string) string {
	if congestion == "" {
		return DefaultCongestion
	}
	return congestion
}

// maxMaxPayload caps MaxPayload so that a frame's length fits in int and
// its cost (frameCost) in uint64, whatever is configured.
const maxMaxPayload = 1 << 56

// withLimits fills in the defaults of MaxPayload and MaxBuffered.
func (c TCPConfig) withLimits() TCPConfig {
	if c.MaxPayload == 0 {
		c.MaxPayload = DefaultMaxPayload
	}
	c.MaxPayload = min(c.MaxPayload, maxMaxPayload)
	if c.MaxBuffered == 0 {
		c.MaxBuffered = 2 * frameCost(c.MaxPayload)
	}
	return c
}

// congestionNames resolves a congestion choice to the names to try in
// order; nil means keep the system's.
func congestionNames(choice string) ([]string, error) {
	choice = CongestionChoice(choice)
	if choice == CongestionSystem {
		return nil, nil
	}
	var names []string
	for _, n := range strings.Split(choice, ",") {
		n = strings.TrimSpace(n)
		if n == "" || len(n) > 15 { // TCP_CA_NAME_MAX is 16 with the NUL
			return nil, fmt.Errorf("TCP congestion control %q: bad name %q", choice, n)
		}
		names = append(names, n)
	}
	return names, nil
}

// errCongestion marks a congestion choice the kernel refused: final, not a
// reason to dial again.
var errCongestion = errors.New("congestion control refused")

// congestionControl returns a socket Control function that applies choice.
func congestionControl(choice string) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		if err := setCongestion(c, choice); err != nil {
			return fmt.Errorf("%w: %w", errCongestion, err)
		}
		return nil
	}
}

// Listen binds the data-plane listener of a worker before it knows its rank;
// "host:0" picks a free port (read it back from Addr()). The connections it
// accepts get DefaultCongestion.
func Listen(addr string) (net.Listener, error) { return ListenCongestion(addr, "") }

// ListenCongestion is Listen whose accepted connections get the congestion
// control congestion (TCPConfig.Congestion's syntax): a connection inherits
// it from the listener, before it carries a byte.
func ListenCongestion(addr, congestion string) (net.Listener, error) {
	lc := net.ListenConfig{Control: congestionControl(congestion)}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("collective: listen on %q: %w", addr, err)
	}
	return ln, nil
}

// DialMesh connects this rank to every other rank: it dials the lower ranks
// and accepts the higher ones on ln (one connection per pair, used in both
// directions). Every connection is authenticated both ways with the job
// token (HMAC challenge-response; the token itself never crosses the wire)
// and carries the dialer's rank; a peer with a wrong token, a rank that is out
// of range, already connected or not the one expected at an address is
// refused with an error naming it. Strangers are refused without failing the
// mesh. ln stays open and owned by the caller; DialMesh accepts on it only
// while it runs.
func DialMesh(ctx context.Context, ln net.Listener, cfg TCPConfig) (Transport, error) {
	n := len(cfg.Addrs)
	if n == 0 {
		return nil, errors.New("collective: dial mesh: no addresses")
	}
	if cfg.Rank < 0 || cfg.Rank >= n {
		return nil, fmt.Errorf("collective: dial mesh: rank %d outside 0..%d", cfg.Rank, n-1)
	}
	if cfg.Token == "" {
		return nil, errors.New("collective: dial mesh: empty job token")
	}
	if _, err := congestionNames(cfg.Congestion); err != nil {
		return nil, fmt.Errorf("collective: dial mesh: %w", err)
	}
	cfg = cfg.withLimits()
	if c := frameCost(cfg.MaxPayload); cfg.MaxBuffered < c {
		return nil, fmt.Errorf("collective: dial mesh: MaxBuffered %d cannot hold a frame of MaxPayload %d bytes (%d with its buffer's size class and bookkeeping), which may arrive before its receive",
			cfg.MaxBuffered, cfg.MaxPayload, c)
	}
	if err := checkShmRing(cfg.ShmRing); err != nil {
		return nil, fmt.Errorf("collective: dial mesh: %w", err)
	}
	if !cfg.ProgressEngine && (cfg.SpinWait > 0 || cfg.SpinYield) {
		return nil, errors.New("collective: dial mesh: SpinWait and SpinYield apply to the progress engine only (set ProgressEngine)")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 30 * time.Second
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.DialTimeout)
		defer cancel()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	conns := make([]*net.TCPConn, n)
	type result struct {
		peer int
		conn *net.TCPConn
		err  error
	}
	results := make(chan result, n)
	var refusals []string
	var refMu sync.Mutex

	// Accept the higher ranks.
	want := n - 1 - cfg.Rank
	acceptDone := make(chan struct{})
	if want > 0 {
		if ln == nil {
			return nil, errors.New("collective: dial mesh: nil listener but higher ranks must connect")
		}
		go func() {
			defer close(acceptDone)
			for {
				c, err := ln.Accept()
				if err != nil {
					if ctx.Err() == nil {
						results <- result{peer: -1, err: fmt.Errorf("accept on %s: %w", ln.Addr(), err)}
					}
					return
				}
				go func() {
					peer, err := acceptHandshake(ctx, c, cfg)
					if err != nil {
						c.Close()
						refMu.Lock()
						refusals = append(refusals, fmt.Sprintf("%s: %v", c.RemoteAddr(), err))
						refMu.Unlock()
						return
					}
					results <- result{peer: peer, conn: c.(*net.TCPConn)}
				}()
			}
		}()
		// Unblock Accept when the mesh is complete or ctx ends.
		unblocked := make(chan struct{})
		stop := context.AfterFunc(ctx, func() {
			defer close(unblocked)
			if d, ok := ln.(interface{ SetDeadline(time.Time) error }); ok {
				_ = d.SetDeadline(time.Unix(1, 0))
			}
		})
		defer func() {
			if !stop() {
				// It runs already: let it finish, or its deadline could
				// land after the reset below and fail the listener's next
				// mesh (a job's ranks dial again after a recovery).
				<-unblocked
			}
			cancel()
			if d, ok := ln.(interface{ SetDeadline(time.Time) error }); ok {
				_ = d.SetDeadline(time.Unix(1, 0))
				<-acceptDone
				_ = d.SetDeadline(time.Time{})
			}
		}()
	} else {
		close(acceptDone)
	}
	// Dial the lower ranks.
	for p := 0; p < cfg.Rank; p++ {
		go func() {
			c, err := dialPeer(ctx, p, cfg)
			results <- result{peer: p, conn: c, err: err}
		}()
	}

	got := 0
	for got < n-1 {
		select {
		case r := <-results:
			if r.err != nil {
				closeAll(conns)
				return nil, fmt.Errorf("collective: dial mesh (rank %d of %d): %w", cfg.Rank, n, r.err)
			}
			if conns[r.peer] != nil {
				r.conn.Close()
				continue
			}
			conns[r.peer] = r.conn
			got++
		case <-ctx.Done():
			closeAll(conns)
			var missing []int
			for p := range n {
				if p != cfg.Rank && conns[p] == nil {
					missing = append(missing, p)
				}
			}
			refMu.Lock()
			defer refMu.Unlock()
			msg := fmt.Sprintf("collective: dial mesh (rank %d of %d): ranks %v never connected: %v", cfg.Rank, n, missing, ctx.Err())
			if len(refusals) > 0 {
				msg += fmt.Sprintf("; refused: %v", refusals)
			}
			return nil, errors.New(msg)
		}
	}
	// Late duplicates from the accept side are closed by the goroutines'
	// owners: drain what is already queued.
	for {
		select {
		case r := <-results:
			if r.conn != nil {
				r.conn.Close()
			}
			continue
		default:
		}
		break
	}
	links, err := negotiateAll(ctx, conns, cfg)
	if err != nil {
		closeAll(conns)
		return nil, fmt.Errorf("collective: dial mesh (rank %d of %d): %w", cfg.Rank, n, err)
	}
	t, err := newTCPTransportShm(cfg, conns, links)
	if err != nil {
		closeAll(conns)
		for _, l := range links {
			if l != nil {
				l.unmap()
			}
		}
		return nil, err
	}
	return t, nil
}

func closeAll(conns []*net.TCPConn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

func tuneConn(c *net.TCPConn, cfg TCPConfig) {
	_ = c.SetNoDelay(true)
	if cfg.SocketBuffer > 0 {
		_ = c.SetReadBuffer(cfg.SocketBuffer)
		_ = c.SetWriteBuffer(cfg.SocketBuffer)
	}
}

// dialPeer connects to rank p until ctx ends, retrying refused connections
// (the peer may not be listening yet) and handshakes the peer dropped
// before it answered (its bound on a handshake ran out while this rank got
// no CPU); a handshake the peer refused is final.
func dialPeer(ctx context.Context, p int, cfg TCPConfig) (*net.TCPConn, error) {
	d := net.Dialer{Control: congestionControl(cfg.Congestion)}
	backoff := 10 * time.Millisecond
	for {
		c, err := d.DialContext(ctx, "tcp", cfg.Addrs[p])
		if err == nil {
			tc := c.(*net.TCPConn)
			tuneConn(tc, cfg)
			herr := dialHandshake(ctx, tc, p, cfg)
			if herr == nil {
				return tc, nil
			}
			tc.Close()
			if errors.Is(herr, ErrRefused) || ctx.Err() != nil {
				return nil, fmt.Errorf("rank %d at %s: %w", p, cfg.Addrs[p], herr)
			}
			err = herr
		} else if ctx.Err() != nil || errors.Is(err, errCongestion) {
			return nil, fmt.Errorf("dial rank %d at %s: %w", p, cfg.Addrs[p], err)
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil, fmt.Errorf("dial rank %d at %s: %w (last error: %v)", p, cfg.Addrs[p], ctx.Err(), err)
		}
		backoff = min(backoff*2, 500*time.Millisecond)
	}
}

// tcpTransport is a full mesh of TCP connections. Each connection has one
// reader goroutine that never blocks on anything but the socket: payloads go
// straight into posted receive buffers or into fresh buffers kept for later
// receives, so a sender can always finish writing. With the progress engine
// (eng) the waiting goroutines move the bytes instead, with the same
// guarantee.
type tcpTransport struct {
	rank       int
	peers      []*tcpPeer
	in         *inbox
	maxPayload uint64
	hostNames  []string                                      // TCPConfig.Hosts
	eng        *progressEngine                               // nil unless TCPConfig.ProgressEngine
	engAwait   func(ctx context.Context, done *signal) error // eng.await, bound once (a method value allocates)
	closeOnce  sync.Once
}

type tcpPeer struct {
	conn   *net.TCPConn
	shm    *shmLink      // non-nil: frames go through shared memory; conn is the liveness
	reader chan struct{} // closed when the shared-memory reader has stopped
	wlock  chan struct{} // held while writing a frame; a channel so waiting can honour ctx
	hbuf   [HeaderSize]byte
	wdl    time.Time // write deadline in force; guarded by wlock
	downMu sync.Mutex
	down   error
}

func newTCPTransport(cfg TCPConfig, conns []*net.TCPConn) (*tcpTransport, error) {
	return newTCPTransportShm(cfg, conns, nil)
}

// newTCPTransportShm is newTCPTransport whose peers p with links[p] set
// (links may be nil) move frames through shared memory, with a reader
// goroutine per such link; their connections carry doorbells and tell of
// the peer's death (see shmLink).
func newTCPTransportShm(cfg TCPConfig, conns []*net.TCPConn, links []*shmLink) (*tcpTransport, error) {
	cfg = cfg.withLimits()
	t := &tcpTransport{rank: cfg.Rank, peers: make([]*tcpPeer, len(conns)), in: newInbox(),
		maxPayload: cfg.MaxPayload, hostNames: cfg.Hosts}
	t.in.maxEarly = cfg.MaxBuffered
	t.in.breakLink = func(p int, err error) { t.linkDown(p, err) }
	for p, c := range conns {
		if c == nil {
			continue
		}
		t.peers[p] = &tcpPeer{conn: c, wlock: make(chan struct{}, 1)}
		if p < len(links) && links[p] != nil {
			t.peers[p].shm = links[p]
			t.peers[p].reader = make(chan struct{})
		}
	}
	// The engine takes (and closes) the TCP pairs' connections; a
	// shared-memory pair keeps its connection as the liveness. When every
	// pair is on shared memory the engine has nothing to move and is not
	// started: its waiters would only add a poll(2) to every receive.
	tcpConns := slices.Clone(conns)
	for p, pc := range t.peers {
		if pc != nil && pc.shm != nil {
			tcpConns[p] = nil
		}
	}
	hasTCP := slices.ContainsFunc(tcpConns, func(c *net.TCPConn) bool { return c != nil })
	if cfg.ProgressEngine && (hasTCP || !slices.ContainsFunc(links, func(l *shmLink) bool { return l != nil })) {
		eng, err := newProgressEngine(t, tcpConns, cfg.SpinWait, cfg.SpinYield)
		if err != nil {
			return nil, err
		}
		t.eng = eng
		t.engAwait = eng.await
	}
	for p, pc := range t.peers {
		switch {
		case pc == nil:
		case t.eng != nil && pc.shm == nil: // the engine reads it
		case pc.shm != nil:
			pc.shm.setBell(pc.conn)
			go func() {
				defer close(pc.reader)
				t.readLoop(p, pc.shm)
			}()
		default:
			// A small buffer: headers and small frames arrive in one
			// read, large payloads bypass it and land in their
			// destination directly.
			go t.readLoop(p, bufio.NewReaderSize(pc.conn, 16<<10))
		}
	}
	return t, nil
}

// encodeHeader writes h, its Len the parts' total, into pc.hbuf; callers
// hold pc.wlock.
func (pc *tcpPeer) encodeHeader(h Header, parts [][]byte) {
	h.Len = 0
	for _, b := range parts {
		h.Len += uint64(len(b))
	}
	EncodeHeader(pc.hbuf[:], h)
}

func (t *tcpTransport) Rank() int { return t.rank }
func (t *tcpTransport) Size() int { return len(t.peers) }

// hosts implements hostLister.
func (t *tcpTransport) hosts() []string { return t.hostNames }

func (t *tcpTransport) peer(p int) (*tcpPeer, error) {
	if p < 0 || p >= len(t.peers) || t.peers[p] == nil {
		return nil, fmt.Errorf("rank %d is not a peer of rank %d in a world of %d", p, t.rank, len(t.peers))
	}
	return t.peers[p], nil
}

// linkDown records that the link to p failed with err, unless it already
// had, and returns the first cause: a write that fails because the reader
// closed the link reports what the reader found (a bad frame), not the
// closed socket.
func (t *tcpTransport) linkDown(p int, err error) error {
	pc := t.peers[p]
	pc.downMu.Lock()
	first := pc.down == nil
	if first {
		pc.down = err
	}
	cause := pc.down
	pc.downMu.Unlock()
	if first {
		if t.eng != nil && pc.shm == nil {
			t.eng.linkDown(p, err)
		} else {
			pc.conn.Close()
		}
		if pc.shm != nil {
			pc.shm.shutdown(err)
			if t.eng != nil {
				t.eng.kick()
			}
		}
		t.in.failPeer(p, err)
	}
	return cause
}

func (t *tcpTransport) Send(ctx context.Context, p int, h Header, parts ...[]byte) error {
	pc, err := t.peer(p)
	if err != nil {
		return err
	}
	if t.eng != nil && pc.shm == nil {
		if err := t.in.peerFailed(p); err != nil {
			return err
		}
		return t.eng.send(ctx, p, h, parts)
	}
	select {
	case pc.wlock <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("waiting to write to rank %d: %w", p, ctx.Err())
	}
	defer func() { <-pc.wlock }()
	if pc.shm != nil {
		return t.shmWrite(ctx, p, pc, h, parts...)
	}
	if err := t.in.peerFailed(p); err != nil {
		return err
	}
	pc.encodeHeader(h, parts)
	// Changing a deadline can wake the runtime's network poller; most sends
	// of an operation share one deadline, so only changes are applied.
	if dl, _ := ctx.Deadline(); !dl.Equal(pc.wdl) {
		_ = pc.conn.SetWriteDeadline(dl)
		pc.wdl = dl
	}
	bufs := make(net.Buffers, 0, 1+len(parts))
	bufs = append(bufs, pc.hbuf[:])
	for _, b := range parts {
		if len(b) > 0 {
			bufs = append(bufs, b)
		}
	}
	if _, err := bufs.WriteTo(pc.conn); err != nil {
		// A partly written frame leaves the stream unusable.
		return &PeerError{Peer: p, Err: t.linkDown(p, fmt.Errorf("write: %w", err))}
	}
	return nil
}

func (t *tcpTransport) asyncSends() bool { return t.eng != nil }

// progress implements sendStarter with the progress engine.
func (t *tcpTransport) progress() { t.eng.poke() }

// startSend implements sendStarter with the progress engine.
func (t *tcpTransport) startSend(p int, h Header, payload []byte) Pending {
	pc, err := t.peer(p)
	if err != nil {
		return failedPending{err}
	}
	if err := t.in.peerFailed(p); err != nil {
		return failedPending{err}
	}
	if pc.shm != nil {
		return t.startShmSend(p, pc, h, payload)
	}
	return t.eng.startSend(p, h, payload)
}

func (t *tcpTransport) Recv(ctx context.Context, p int, want Header, dst []byte) (Header, error) {
	if _, err := t.peer(p); err != nil {
		return Header{}, err
	}
	if t.eng != nil {
		pd := t.Post(p, want, dst)
		h, err := pd.Wait(ctx)
		release(pd)
		return h, err
	}
	return t.in.recv(ctx, p, want, dst)
}

func (t *tcpTransport) Post(p int, want Header, dst []byte) Pending {
	return t.post(p, want, dst, false)
}

// postScratch implements scratchPoster: with the progress engine, the
// reader may read a payload into dst before it has checked the header.
func (t *tcpTransport) postScratch(p int, want Header, dst []byte) Pending {
	return t.post(p, want, dst, t.eng != nil)
}

func (t *tcpTransport) post(p int, want Header, dst []byte, scratch bool) Pending {
	if _, err := t.peer(p); err != nil {
		return failedPending{err}
	}
	pd := t.in.postOpts(p, want, dst, scratch && t.peers[p].shm == nil)
	// With the engine, a goroutine waiting for a shared-memory frame drives
	// it too: its own sends to TCP peers may be queued there. The ring's
	// reader kicks the engine when it completes a receive.
	pd.await = t.engAwait
	return pd
}

func (t *tcpTransport) Close() error {
	t.closeOnce.Do(func() {
		t.in.close(ErrClosed)
		if t.eng != nil {
			t.eng.close()
		}
		for _, pc := range t.peers {
			if pc != nil && (t.eng == nil || pc.shm != nil) {
				pc.downMu.Lock()
				if pc.down == nil {
					pc.down = ErrClosed
				}
				pc.downMu.Unlock()
				pc.conn.Close()
				if pc.shm != nil {
					pc.shm.shutdown(ErrClosed)
				}
			}
		}
		// The rings are unmapped once nobody can touch them: the reader
		// has stopped and no write is in progress.
		for _, pc := range t.peers {
			if pc != nil && pc.shm != nil {
				<-pc.reader
				pc.wlock <- struct{}{} // a Send after this fails: the inbox is closed
				pc.shm.unmap()
				<-pc.wlock
			}
		}
	})
	return nil
}

// readLoop reads peer p's frames from br (its connection, or its
// shared-memory ring) into the inbox until the link fails.
func (t *tcpTransport) readLoop(p int, br io.Reader) {
	var hb [HeaderSize]byte
	for ; ; t.kickEngine() {
		if _, err := io.ReadFull(br, hb[:]); err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("connection closed by peer")
			}
			t.linkDown(p, fmt.Errorf("read: %w", err))
			return
		}
		h, err := DecodeHeader(hb[:], t.maxPayload)
		if err != nil {
			t.linkDown(p, err)
			return
		}
		if h.Op == OpAbort {
			// Kept as long as the transport: charged for good.
			if err := t.in.charge(p, h.Len, true); err != nil {
				t.linkDown(p, err)
				return
			}
			reason := make([]byte, h.Len)
			if _, err := io.ReadFull(br, reason); err != nil {
				t.linkDown(p, fmt.Errorf("read: %w", err))
				return
			}
			t.in.abort(p, h.Tag, string(reason))
			continue
		}
		w, err := t.in.claimOrCharge(p, h)
		if err != nil {
			t.linkDown(p, err)
			return
		}
		if w != nil {
			_, err := io.ReadFull(br, w.dst)
			if err != nil {
				err = &PeerError{Peer: p, Err: fmt.Errorf("read payload: %w", err)}
			}
			t.in.finish(w, err)
			if err != nil {
				t.linkDown(p, err)
				return
			}
			continue
		}
		buf, err := readPieces(br, int(h.Len))
		if err != nil {
			t.in.refund(p, h.Len)
			t.linkDown(p, fmt.Errorf("read payload: %w", err))
			return
		}
		t.in.store(p, h, buf)
	}
}

// kickEngine wakes a progress engine's driver blocked in poll(2): a
// shared-memory reader completed a receive it may wait for.
func (t *tcpTransport) kickEngine() {
	if t.eng != nil {
		t.eng.kick()
	}
}

// unexpectedPiece is the first buffer of a payload that no receive waits
// for; it doubles as the bytes arrive, so a length that the peer does not
// follow with bytes costs one piece or twice what it did send, not the
// length. Larger than a ring segment (Config.SegmentBytes), whose buffer
// then never grows.
const unexpectedPiece = 1 << 20

// readPieces reads an n-byte payload from r into a scratch buffer (getBuf)
// grown as it arrives (see unexpectedPiece).
func readPieces(r io.Reader, n int) ([]byte, error) {
	buf := getBuf(min(n, unexpectedPiece))
	off := 0
	for {
		k, err := io.ReadFull(r, buf[off:])
		off += k
		if err != nil {
			putBuf(buf)
			return nil, err
		}
		if off == n {
			return buf, nil
		}
		buf = growPiece(buf, off, n)
	}
}

// growPiece returns a buffer of min(n, 2·len(buf)) bytes holding buf[:off]
// and recycles buf.
func growPiece(buf []byte, off, n int) []byte {
	nb := getBuf(min(n, 2*len(buf)))
	copy(nb, buf[:off])
	putBuf(buf)
	return nb
}
