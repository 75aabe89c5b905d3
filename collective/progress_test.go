//go:build linux

package collective

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// tcpModes are the ways a TCP transport moves bytes: reader goroutines,
// and the progress engine blocking in poll(2) at once, spinning, and
// spinning with sched_yield.
var tcpModes = []struct {
	name   string
	engine bool
	spin   time.Duration
	yield  bool
}{
	{"readers", false, 0, false},
	{"block", true, 0, false},
	{"spin", true, 50 * time.Microsecond, false},
	{"yield", true, 50 * time.Microsecond, true},
}

func tcpMeshEngine(t *testing.T, n int, spin time.Duration, yield bool) []Transport {
	t.Helper()
	return tcpMeshMode(t, n, true, spin, yield)
}

// tcpMeshMode builds an n-rank loopback mesh in one of tcpModes.
func tcpMeshMode(t *testing.T, n int, engine bool, spin time.Duration, yield bool) []Transport {
	t.Helper()
	ts, errs := dialTestMesh(t, n, 5*time.Second, func(rank int, addrs []string) TCPConfig {
		return TCPConfig{Rank: rank, Addrs: addrs, Token: "engine", SpinWait: spin, SpinYield: yield, ProgressEngine: engine}
	})
	mustAll(t, errs)
	t.Cleanup(func() { closeAllT(ts) })
	for r, tr := range ts {
		if (tr.(*tcpTransport).eng != nil) != engine {
			t.Fatalf("rank %d: progress engine %v, want %v", r, tr.(*tcpTransport).eng != nil, engine)
		}
	}
	return ts
}

// TestTCPModesCollectives runs the collectives over TCP in every mode of
// tcpModes over world sizes 1–8 and checks exact results.
func TestTCPModesCollectives(t *testing.T) {
	sizes := []int{0, 1, 7, 101, 4099, 1<<18 + 3}
	for _, m := range tcpModes {
		for _, n := range []int{1, 2, 3, 5, 8} {
			t.Run(fmt.Sprintf("%s/n=%d", m.name, n), func(t *testing.T) {
				ts := tcpMeshMode(t, n, m.engine, m.spin, m.yield)
				for cfgName, cfg := range testCfgs {
					comms := worlds(ts, cfg)
					ctx := testCtx(t, 20*time.Second)
					for _, size := range sizes {
						if n == 8 && size > 4099 && cfgName != "default" {
							continue
						}
						mustAll(t, runRanks(comms, func(c *Comm) error {
							return collectivesRound(ctx, c, size)
						}))
					}
				}
				checkNoWaiters(t, ts)
			})
		}
	}
}

// TestTCPModesSubGroupsConcurrent: many goroutines of one rank wait at once
// on three groups (with the engine, one drives, the others park and take
// over).
func TestTCPModesSubGroupsConcurrent(t *testing.T) {
	for _, m := range tcpModes {
		t.Run(m.name, func(t *testing.T) {
			subGroupsConcurrent(t, tcpMeshMode(t, 8, m.engine, m.spin, m.yield))
		})
	}
}

// TestTCPModesDeadPeer: a peer that dies mid-operation fails the survivors
// with an error naming it, before the deadline, in every mode.
func TestTCPModesDeadPeer(t *testing.T) {
	for _, m := range tcpModes {
		for _, size := range []int{1000, 1<<18 + 3} {
			t.Run(fmt.Sprintf("%s/size=%d", m.name, size), func(t *testing.T) {
				deadPeerMidOperation(t, tcpMeshMode(t, 3, m.engine, m.spin, m.yield), size)
			})
		}
	}
}

// TestTCPEngineStalledSend: a frame the peer never reads fails at the
// deadline; the link is then down, so the next send fails at once, and the
// peer sees the link fail too.
func TestTCPEngineStalledSend(t *testing.T) {
	ts := tcpMeshEngine(t, 2, 0, false)
	big := make([]byte, 64<<20) // far beyond the socket buffers
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	h := Header{Op: OpSendRecv, Tag: Tag{Group: 1, Seq: 1}, Count: uint64(len(big) / 4)}
	start := time.Now()
	err := ts[0].Send(ctx, 1, h, big)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stalled send: want a deadline error, got %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("stalled send returned after %v", d)
	}
	err = ts[0].Send(context.Background(), 1, h, []byte{1, 2, 3, 4})
	var pe *PeerError
	if !errors.As(err, &pe) || pe.Peer != 1 {
		t.Fatalf("send after a stall: want a PeerError for rank 1, got %v", err)
	}
	// Rank 1 reads what arrived, then the close.
	rctx := testCtx(t, 5*time.Second)
	_, err = ts[1].Recv(rctx, 0, h, make([]byte, len(big)))
	if !errors.As(err, &pe) || pe.Peer != 0 {
		t.Fatalf("receiver of a cut frame: want a PeerError for rank 0, got %v", err)
	}
}

// TestTCPEngineDesync: ranks that call different collectives get a
// desynchronisation error, not wrong numbers.
func TestTCPEngineDesync(t *testing.T) {
	ts := tcpMeshEngine(t, 2, 0, false)
	comms := worlds(ts, Config{})
	ctx := testCtx(t, 5*time.Second)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); errs[0] = comms[0].AllReduce(ctx, make([]float32, 100), Sum) }()
	go func() { defer wg.Done(); errs[1] = comms[1].AllGather(ctx, make([]float32, 50), make([]float32, 100)) }()
	wg.Wait()
	for r, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "desync") {
			t.Errorf("rank %d: want a desynchronisation error, got %v", r, err)
		}
	}
}

// TestEngineReadsFragmentedStream feeds the engine frames written in random
// pieces (headers and payloads split anywhere, with pauses), some for
// receives posted before they arrive (read in place) and some after (kept
// by the inbox), then a corrupt header: every payload arrives intact and in
// full, and the bad frame fails the link with an error naming the peer.
func TestEngineReadsFragmentedStream(t *testing.T) {
	for _, m := range tcpModes {
		if m.engine {
			t.Run(m.name, func(t *testing.T) { testEngineFragmented(t, m.spin, m.yield) })
		}
	}
}

func testEngineFragmented(t *testing.T, spin time.Duration, yield bool) {
	a, b := loopbackPair(t)
	tr, err := newTCPTransport(TCPConfig{Rank: 0, Addrs: []string{"", ""}, MaxPayload: DefaultMaxPayload,
		SpinWait: spin, SpinYield: yield, ProgressEngine: true}, []*net.TCPConn{nil, a})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	sizes := []int{0, 1, HeaderSize - 1, HeaderSize, HeaderSize + 1, stageBytes/2 - 1, stageBytes / 2, stageBytes - 1,
		stageBytes, stageBytes + 1, 40000, 1<<20 + 3}
	payload := func(i, n int) []byte {
		p := make([]byte, n)
		for k := range p {
			p[k] = byte(i*31 + k*7)
		}
		return p
	}
	var stream []byte
	for i, n := range sizes {
		var hb [HeaderSize]byte
		EncodeHeader(hb[:], Header{Op: OpSendRecv, Tag: Tag{Group: 9, Seq: 1, Step: uint32(i)}, Count: uint64(n), Len: uint64(n)})
		stream = append(stream, hb[:]...)
		stream = append(stream, payload(i, n)...)
	}
	stream = append(stream, make([]byte, HeaderSize)...) // bad magic
	rng := rand.New(rand.NewPCG(uint64(len(stream)), 7))
	// Receives for the even frames are posted before anything is sent.
	pend := make([]Pending, len(sizes))
	dsts := make([][]byte, len(sizes))
	want := func(i int) Header {
		return Header{Op: OpSendRecv, Tag: Tag{Group: 9, Seq: 1, Step: uint32(i)}, Count: uint64(sizes[i])}
	}
	for i := 0; i < len(sizes); i += 2 {
		dsts[i] = make([]byte, sizes[i])
		pend[i] = tr.Post(1, want(i), dsts[i])
	}
	writeErr := make(chan error, 1)
	go func() {
		for off := 0; off < len(stream); {
			k := min(len(stream)-off, 1+rng.IntN(3*stageBytes))
			if rng.IntN(4) == 0 {
				k = min(k, 1+rng.IntN(HeaderSize))
			}
			if _, err := b.Write(stream[off : off+k]); err != nil {
				writeErr <- err
				return
			}
			off += k
			if rng.IntN(8) == 0 {
				time.Sleep(200 * time.Microsecond)
			}
		}
		writeErr <- nil
	}()
	ctx := testCtx(t, 10*time.Second)
	for i := range sizes {
		if pend[i] == nil {
			dsts[i] = make([]byte, sizes[i])
			pend[i] = tr.Post(1, want(i), dsts[i])
		}
		if _, err := pend[i].Wait(ctx); err != nil {
			t.Fatalf("frame %d (%d bytes): %v", i, sizes[i], err)
		}
		if !bytes.Equal(dsts[i], payload(i, sizes[i])) {
			t.Fatalf("frame %d (%d bytes): payload differs", i, sizes[i])
		}
	}
	last := Header{Op: OpSendRecv, Tag: Tag{Group: 9, Seq: 1, Step: uint32(len(sizes))}}
	_, err = tr.Recv(ctx, 1, last, nil)
	var pe *PeerError
	if !errors.As(err, &pe) || pe.Peer != 1 || !errors.Is(err, ErrBadFrame) {
		t.Fatalf("after a corrupt header: want a PeerError for rank 1 wrapping ErrBadFrame, got %v", err)
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("writer: %v", err)
	}
}

// TestTCPEngineShaped: shaped links over the engine keep queued sends (the
// ring and the all-to-all run in one goroutine) and exact results.
func TestTCPEngineShaped(t *testing.T) {
	ts := tcpMeshEngine(t, 3, 50*time.Microsecond, false)
	shaped := make([]Transport, len(ts))
	for r, tr := range ts {
		shaped[r] = NewShaped(tr, LinkShape{From: -1, To: -1, Bandwidth: 2e9, Latency: 20 * time.Microsecond})
		if asyncSender(shaped[r]) == nil {
			t.Fatalf("rank %d: shaped transport over the engine has no queued sends", r)
		}
	}
	ctx := testCtx(t, 20*time.Second)
	for _, cfg := range testCfgs {
		comms := worlds(shaped, cfg)
		for _, size := range []int{0, 7, 4099, 1<<18 + 3} {
			mustAll(t, runRanks(comms, func(c *Comm) error { return collectivesRound(ctx, c, size) }))
		}
	}
}

// fuzzPosted is the frame FuzzEngineStream has a receive posted for.
var fuzzPosted = Header{Op: OpSendRecv, Tag: Tag{Group: 3, Seq: 1}, Count: 25}

const fuzzPostedLen = 100

// FuzzEngineStream feeds arbitrary bytes, in arbitrary pieces, to the
// engine's frame reader; see fuzzStream.
func FuzzEngineStream(f *testing.F) {
	fuzzStreamSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte, piece uint16) { fuzzStream(t, data, piece, true) })
}

// FuzzReaderStream is FuzzEngineStream for the reader goroutines, the
// frame reader of cluster's data plane.
func FuzzReaderStream(f *testing.F) {
	fuzzStreamSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte, piece uint16) { fuzzStream(t, data, piece, false) })
}

func fuzzStreamSeeds(f *testing.F) {
	var buf bytes.Buffer
	WriteFrame(&buf, Header{Op: OpAllReduce, Tag: Tag{Group: 1, Seq: 2}, Count: 3}, []byte{1, 2, 3, 4})
	WriteFrame(&buf, Header{Op: OpAbort, Tag: Tag{Group: 1, Seq: 3}}, []byte("why"))
	WriteFrame(&buf, Header{Op: OpSendRecv, Tag: Tag{Group: 2, Seq: 1}, Count: 1}, bytes.Repeat([]byte{7}, 40000))
	WriteFrame(&buf, fuzzPosted, bytes.Repeat([]byte{5}, fuzzPostedLen))
	f.Add(buf.Bytes(), uint16(1))
	f.Add(buf.Bytes(), uint16(57))
	f.Add([]byte{}, uint16(0))
	f.Add(bytes.Repeat([]byte{0xff}, HeaderSize), uint16(3))
	// More than MaxBuffered ahead of their receives.
	buf.Reset()
	for i := range 5 {
		WriteFrame(&buf, Header{Op: OpSendRecv, Tag: Tag{Group: 4, Seq: uint64(i)}, Count: 1}, bytes.Repeat([]byte{9}, 60000))
	}
	f.Add(buf.Bytes(), uint16(4000))
}

// fuzzStream feeds data, in pieces of about piece bytes, to a transport's
// frame reader (the engine's or the reader goroutines'). It never panics or
// hangs: the stream ends in a failed link that fails a waiting receive with
// a *PeerError; every frame it kept is one the reference decoder
// (ReadFrame) reads from the same bytes, with the same payload; and what is
// charged to the peer (MaxBuffered) is exactly what it keeps.
func fuzzStream(t *testing.T, data []byte, piece uint16, engine bool) {
	const maxPayload, maxBuffered = 1 << 16, 1 << 17
	a, b := loopbackPair(t)
	// Closed with a reset, not left in TIME_WAIT: a fuzzing run opens
	// connections by the ten thousand and would run out of ports.
	_ = a.SetLinger(0)
	_ = b.SetLinger(0)
	tr, err := newTCPTransport(TCPConfig{Rank: 0, Addrs: []string{"", ""}, MaxPayload: maxPayload, MaxBuffered: maxBuffered,
		ProgressEngine: engine}, []*net.TCPConn{nil, a})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	go func() {
		// At most about 64 pieces: one byte per write of a long input
		// would make every run slow without finding more.
		step := max(int(piece)%4096+1, len(data)/64)
		for off := 0; off < len(data); off += step {
			if _, err := b.Write(data[off:min(off+step, len(data))]); err != nil {
				return // the transport closed a link it found broken
			}
		}
		_ = b.CloseWrite()
	}()
	checkFuzzedStream(t, tr, data, maxPayload, maxBuffered)
}

// checkFuzzedStream is fuzzStream's check of tr, whose rank 1 sends data
// (and then nothing).
func checkFuzzedStream(t *testing.T, tr *tcpTransport, data []byte, maxPayload, maxBuffered uint64) {
	// A receive posted up front: after a long payload the engine guesses
	// that the next frame is its (readSpeculative).
	posted := make([]byte, fuzzPostedLen)
	pPosted := tr.Post(1, fuzzPosted, posted)
	waitPeerError(t, tr) // the stream ended
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ref := map[mkey][]Header{}
	refPayload := map[mkey][][]byte{}
	r := bytes.NewReader(data)
	for {
		h, p, err := ReadFrame(r, maxPayload)
		if err != nil {
			break
		}
		k := mkey{1, h.Tag}
		ref[k] = append(ref[k], h)
		refPayload[k] = append(refPayload[k], p)
	}
	if _, err := pPosted.Wait(ctx); err == nil {
		k := mkey{1, fuzzPosted.Tag}
		ok := false
		for i, h := range ref[k] {
			ok = ok || (h.Op == fuzzPosted.Op && h.Count == fuzzPosted.Count && bytes.Equal(refPayload[k][i], posted))
		}
		if !ok {
			t.Fatalf("the posted receive completed with a payload the reference decoder does not read")
		}
	}
	tr.in.mu.Lock()
	defer tr.in.mu.Unlock()
	var charged uint64
	for k, got := range tr.in.arrived {
		charged += frameCost(got.h.Len)
		ok := false
		for i, h := range ref[k] {
			ok = ok || (h == got.h && bytes.Equal(refPayload[k][i], got.payload))
		}
		if !ok {
			t.Fatalf("kept a frame %v (%d bytes) that the reference decoder does not read", got.h, len(got.payload))
		}
	}
	var early, kept uint64
	if len(tr.in.early) > 1 {
		early, kept = tr.in.early[1], tr.in.kept[1]
	}
	if early != charged || early+kept > maxBuffered {
		t.Fatalf("rank 1 is charged %d (+%d for aborts, limit %d) for kept frames that cost %d", early, kept, maxBuffered, charged)
	}
}

// TestTCPEngineStagedFramesAtBudget: a pass that stops at readBudget may
// leave whole frames read into the stage with nothing more on the socket.
// A driver that polls first (ranks sharing cores) must still deliver them,
// not wait for bytes that will never come.
func TestTCPEngineStagedFramesAtBudget(t *testing.T) {
	const payload = 8192 - HeaderSize // frames of 8 KiB: 4 per stage read
	const frames = readBudget / (HeaderSize + payload)
	ts, errs := dialTestMesh(t, 2, 5*time.Second, func(rank int, addrs []string) TCPConfig {
		return TCPConfig{Rank: rank, Addrs: addrs, Token: "engine", SpinWait: time.Millisecond, SpinYield: true,
			ProgressEngine: true, SocketBuffer: 4 << 20}
	})
	mustAll(t, errs)
	t.Cleanup(func() { closeAllT(ts) })
	if !ts[0].(*tcpTransport).eng.pollFirst {
		t.Fatal("the receiving engine does not poll first; the test would not cover that path")
	}
	hdr := func(i int) Header {
		return Header{Op: OpSendRecv, Tag: Tag{Group: 1, Seq: uint64(i)}, Count: payload / 4}
	}
	ctx := testCtx(t, 5*time.Second)
	// Exactly readBudget bytes, all in the receiver's socket before it reads.
	for i := range frames {
		b := make([]byte, payload)
		b[0], b[payload-1] = byte(i), byte(i+1)
		if err := ts[1].Send(ctx, 0, hdr(i), b); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(20 * time.Millisecond)
	for i := range frames {
		b := make([]byte, payload)
		rctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := ts[0].Recv(rctx, 1, hdr(i), b)
		cancel()
		if err != nil {
			t.Fatalf("frame %d of %d: %v", i, frames, err)
		}
		if b[0] != byte(i) || b[payload-1] != byte(i+1) {
			t.Fatalf("frame %d: payload ends %d, %d; want %d, %d", i, b[0], b[payload-1], byte(i), byte(i+1))
		}
	}
}

// Receives and frames go back to the transport after an all-to-all and are
// reused by the next, clean: a recycled receive with nothing sent to it
// waits out its deadline instead of completing from its previous use.
func TestTCPEngineRecycles(t *testing.T) {
	ts := tcpMeshEngine(t, 2, 50*time.Microsecond, false)
	comms := worlds(ts, Config{})
	ctx := testCtx(t, 10*time.Second)
	for round := range 3 {
		mustAll(t, runRanks(comms, func(c *Comm) error {
			send := make([]float32, 2*1000)
			recv := make([]float32, len(send))
			for i := range send {
				send[i] = val(c.Rank(), i+round)
			}
			if err := c.AllToAll(ctx, send, recv); err != nil {
				return err
			}
			for p := range 2 {
				for i := range 1000 {
					if want := val(p, c.Rank()*1000+i+round); recv[p*1000+i] != want {
						return fmt.Errorf("round %d: from %d [%d] = %v, want %v", round, p, i, recv[p*1000+i], want)
					}
				}
			}
			return nil
		}))
	}
	tr := ts[0].(*tcpTransport)
	tr.in.mu.Lock()
	free := len(tr.in.free)
	var reused *pending
	if free > 0 {
		reused = tr.in.free[free-1]
	}
	tr.in.mu.Unlock()
	if free == 0 {
		t.Fatal("no receive was recycled")
	}
	pp := tr.eng.peers[1]
	pp.mu.Lock()
	frames := len(pp.free)
	pp.mu.Unlock()
	if frames == 0 {
		t.Fatal("no frame was recycled")
	}
	p := tr.Post(1, Header{Op: OpAllToAll, Tag: Tag{Group: 99, Seq: 1}, Count: 4}, make([]byte, 16))
	if p.(*pending) != reused {
		t.Fatal("post did not reuse the released receive")
	}
	short, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := p.Wait(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("recycled receive with nothing sent: %v, want the deadline", err)
	}
	checkNoWaiters(t, ts)
}

// With few ranks and a caller's deadline, the small collectives on the
// progress engine allocate nothing: their bookkeeping lives on the stack
// and their receives and frames are recycled. (Halving-doubling and the
// ring, for all-reduces past Config.SmallBytes, still allocate their plans:
// about 10 objects per rank and operation at 4 ranks.)
func TestTCPEngineCollectivesAllocs(t *testing.T) {
	const ops = 200
	cases := []struct {
		name string
		n    int
		run  func(ctx context.Context, c *Comm, a, b []float32) error
	}{
		{"alltoall", 4, func(ctx context.Context, c *Comm, a, b []float32) error { return c.AllToAll(ctx, a, b) }},
		{"allreduce-doubling", 2, func(ctx context.Context, c *Comm, a, _ []float32) error { return c.AllReduce(ctx, a[:256], Sum) }},
		{"ringexchange", 3, func(ctx context.Context, c *Comm, a, b []float32) error {
			return c.RingExchange(ctx, a[:1000], a[1000:2000], b[:1000], b[1000:2000])
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := tcpMeshEngine(t, tc.n, 200*time.Microsecond, false)
			comms := worlds(ts, Config{})
			ctx := testCtx(t, 20*time.Second)
			a := make([][]float32, tc.n)
			b := make([][]float32, tc.n)
			for r := range tc.n {
				a[r], b[r] = make([]float32, 4096), make([]float32, 4096)
			}
			run := func(count int) {
				mustAll(t, runRanks(comms, func(c *Comm) error {
					for range count {
						if err := tc.run(ctx, c, a[c.Rank()], b[c.Rank()]); err != nil {
							return err
						}
					}
					return nil
				}))
			}
			run(20) // fills the free lists and the buffer pools
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			run(ops)
			runtime.ReadMemStats(&after)
			// runRanks itself allocates a few objects (goroutines, its error slice).
			if perOp := float64(after.Mallocs-before.Mallocs) / float64(tc.n*ops); perOp > 0.1 {
				t.Errorf("%.2f allocations per rank per operation, want none", perOp)
			}
		})
	}
}

// The engine reads a header and its payload in one call when it guesses
// the frame from the oldest receive posted for the peer (readSpeculative).
// Frames sent in an order other than their receives were posted, cut into
// random pieces, of lengths around the speculation bound, must all land
// whole and exact; the guess must have been right and wrong in the run.
func TestEngineSpeculativeReads(t *testing.T) {
	tr, b := enginePair(t, 20*time.Microsecond)
	ctx := testCtx(t, 20*time.Second)
	rng := rand.New(rand.NewPCG(11, 12))
	sizes := []int{1, 100, HeaderSize, stageBytes / 2, stageBytes/2 + 1, maxSpeculate - 1, maxSpeculate, maxSpeculate + 1, stageBytes, 40000}
	payload := func(round, i, n int) []byte {
		p := make([]byte, n)
		for k := range p {
			p[k] = byte(round*131 + i*31 + k*7)
		}
		return p
	}
	for round := range 30 {
		m := 6 + rng.IntN(10)
		lens := make([]int, m)
		for i := range lens {
			lens[i] = sizes[rng.IntN(len(sizes))]
		}
		lens[0] = stageBytes // a long payload first: the next header is read with a guess
		hdr := func(i int) Header {
			return Header{Op: OpSendRecv, Tag: Tag{Group: 5, Seq: uint64(round), Step: uint32(i)}, Count: uint64(lens[i])}
		}
		// Receives posted in one order (most up front, some late), frames
		// sent in another.
		pend := make([]Pending, m)
		dsts := make([][]byte, m)
		for _, i := range rng.Perm(m) {
			if rng.IntN(4) > 0 {
				dsts[i] = make([]byte, lens[i])
				pend[i] = tr.postScratch(1, hdr(i), dsts[i])
			}
		}
		var stream []byte
		var ends []int // where each frame ends in stream
		for _, i := range rng.Perm(m) {
			h := hdr(i)
			h.Len = uint64(lens[i])
			var hb [HeaderSize]byte
			EncodeHeader(hb[:], h)
			stream = append(stream, hb[:]...)
			stream = append(stream, payload(round, i, lens[i])...)
			ends = append(ends, len(stream))
		}
		writeErr := make(chan error, 1)
		go func() {
			wr := rand.New(rand.NewPCG(uint64(round), 3))
			for off := 0; off < len(stream); {
				k := min(len(stream)-off, 1+wr.IntN(2*stageBytes))
				if wr.IntN(3) == 0 {
					k = min(k, 1+wr.IntN(2*HeaderSize))
				}
				// Often stop at the end of a frame for a moment, so that the
				// reader finds the next header alone and guesses.
				if i := slices.IndexFunc(ends, func(e int) bool { return e > off }); i >= 0 && off+k > ends[i] && wr.IntN(2) == 0 {
					k = ends[i] - off
				}
				if _, err := b.Write(stream[off : off+k]); err != nil {
					writeErr <- err
					return
				}
				off += k
				if slices.Contains(ends, off) || wr.IntN(6) == 0 {
					time.Sleep(100 * time.Microsecond)
				}
			}
			writeErr <- nil
		}()
		for i := range m {
			if pend[i] == nil {
				dsts[i] = make([]byte, lens[i])
				pend[i] = tr.postScratch(1, hdr(i), dsts[i])
			}
		}
		for i := range m {
			if _, err := pend[i].Wait(ctx); err != nil {
				t.Fatalf("round %d frame %d (%d bytes): %v", round, i, lens[i], err)
			}
			if !bytes.Equal(dsts[i], payload(round, i, lens[i])) {
				t.Fatalf("round %d frame %d (%d bytes): payload differs", round, i, lens[i])
			}
			release(pend[i])
		}
		if err := <-writeErr; err != nil {
			t.Fatal(err)
		}
	}
	e := tr.eng
	e.token <- struct{}{}
	hits, misses := e.specHits, e.specMisses
	<-e.token
	t.Logf("speculative reads: %d right, %d wrong", hits, misses)
	if hits == 0 || misses == 0 {
		t.Fatalf("speculative reads: %d right, %d wrong; the test must see both", hits, misses)
	}
	checkNoWaiters(t, []Transport{tr})
}

// A frame with the tag of the receive guessed for it but another length is
// a desync on that receive, as without the guess, and the link stays up.
func TestEngineSpeculativeDesync(t *testing.T) {
	tr, b := enginePair(t, 20*time.Microsecond)
	ctx := testCtx(t, 10*time.Second)
	tag := func(step uint32) Tag { return Tag{Group: 3, Seq: 1, Step: step} }
	long := Header{Op: OpSendRecv, Tag: tag(0), Count: stageBytes}
	want := Header{Op: OpSendRecv, Tag: tag(1), Count: 20000}
	after := Header{Op: OpSendRecv, Tag: tag(2), Count: 10}
	pLong := tr.Post(1, long, make([]byte, stageBytes))
	pWant := tr.postScratch(1, want, make([]byte, 20000))
	var buf bytes.Buffer
	WriteFrame(&buf, long, make([]byte, stageBytes))
	if _, err := b.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	if _, err := pLong.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	// Sent once the long frame is in: the next header is read into an
	// empty stage, with a guess.
	buf.Reset()
	bad := want
	bad.Count = 15000
	WriteFrame(&buf, bad, make([]byte, 15000))
	WriteFrame(&buf, after, bytes.Repeat([]byte{9}, 10))
	if _, err := b.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	_, err := pWant.Wait(ctx)
	var de *DesyncError
	if !errors.As(err, &de) || de.Got.Len != 15000 {
		t.Fatalf("receive for 20000 bytes given 15000: %v, want a DesyncError naming 15000", err)
	}
	got := make([]byte, 10)
	if _, err := tr.Recv(ctx, 1, after, got); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{9}, 10)) {
		t.Fatalf("frame after the desync: %v %v", err, got)
	}
	e := tr.eng
	e.token <- struct{}{}
	misses := e.specMisses
	<-e.token
	if misses == 0 {
		t.Fatal("the desynchronised frame was not read with a guess")
	}
}

// Only a scratch receive (an all-to-all's) is read into before its header
// is checked. A receive posted with Post may target memory that a queued
// send still reads (the ring all-reduce receives the all-gather of a chunk
// over the chunk its reduce-scatter is sending): another frame's bytes must
// never land there. The same sequence with a scratch receive shows that a
// guess was made.
func TestEngineGuessOnlyScratch(t *testing.T) {
	for _, scratch := range []bool{false, true} {
		t.Run(fmt.Sprint("scratch=", scratch), func(t *testing.T) {
			tr, b := enginePair(t, time.Second)
			ctx := testCtx(t, 10*time.Second)
			frame := func(h Header, p []byte) []byte {
				var buf bytes.Buffer
				WriteFrame(&buf, h, p)
				return buf.Bytes()
			}
			// A long payload first, so that the next header is read with a
			// guess if one is allowed.
			h0 := stepHeader(0, 20000)
			p0 := tr.Post(1, h0, make([]byte, 20000))
			if _, err := b.Write(frame(h0, make([]byte, 20000))); err != nil {
				t.Fatal(err)
			}
			if _, err := p0.Wait(ctx); err != nil {
				t.Fatal(err)
			}
			x := bytes.Repeat([]byte{0xAB}, 20000)
			hR := stepHeader(1, len(x))
			var pR Pending
			if scratch {
				pR = tr.postScratch(1, hR, x)
			} else {
				pR = tr.Post(1, hR, x)
			}
			hQ := stepHeader(2, 100)
			q := make([]byte, 100)
			pQ := tr.Post(1, hQ, q)
			qDone := make(chan error, 1)
			go func() { _, err := pQ.Wait(ctx); qDone <- err }()
			time.Sleep(5 * time.Millisecond) // the driver spins on the empty socket
			if _, err := b.Write(frame(hQ, bytes.Repeat([]byte{0xEE}, 100))); err != nil {
				t.Fatal(err)
			}
			if err := <-qDone; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(q, bytes.Repeat([]byte{0xEE}, 100)) {
				t.Fatal("the frame that came first has the wrong payload")
			}
			e := tr.eng
			e.token <- struct{}{}
			misses := e.specMisses
			<-e.token
			switch {
			case !scratch && !bytes.Equal(x, bytes.Repeat([]byte{0xAB}, len(x))):
				t.Fatalf("a receive posted with Post had its buffer written by another frame: x[0] = %#x", x[0])
			case !scratch && misses != 0:
				t.Fatalf("%d guesses for a receive posted with Post", misses)
			case scratch && misses == 0:
				t.Fatal("no guess for the scratch receive: the test shows nothing")
			}
			want := bytes.Repeat([]byte{0x5A}, len(x))
			if _, err := b.Write(frame(hR, want)); err != nil {
				t.Fatal(err)
			}
			if _, err := pR.Wait(ctx); err != nil || !bytes.Equal(x, want) {
				t.Fatalf("the receive's own frame: %v, payload equal %v", err, bytes.Equal(x, want))
			}
		})
	}
}

// A scratch receive that times out while another goroutine drives (and
// guesses it, over and over, on an empty socket) fails alone: the link
// stays up. The guess holds the inbox's lock rather than claiming the
// receive, which would make its Wait take the link down ("stalled in the
// middle of a frame").
func TestEngineGuessTimeoutKeepsLink(t *testing.T) {
	tr, b := enginePair(t, time.Second)
	ctx := testCtx(t, 10*time.Second)
	h0 := stepHeader(0, 20000)
	p0 := tr.Post(1, h0, make([]byte, 20000))
	var buf bytes.Buffer
	WriteFrame(&buf, h0, make([]byte, 20000))
	if _, err := b.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	if _, err := p0.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	// Another goroutine drives: it waits for a send the peer does not read.
	big := make([]byte, 64<<20)
	pBig := tr.startSend(1, stepHeader(100, len(big)), big)
	dctx, dcancel := context.WithCancel(ctx)
	driving := make(chan struct{})
	go func() { _, _ = pBig.Wait(dctx); close(driving) }()
	defer func() { dcancel(); <-driving }()
	time.Sleep(2 * time.Millisecond)
	for i := range 300 {
		pR := tr.postScratch(1, stepHeader(uint32(10+i), 100), make([]byte, 100))
		short, cancel := context.WithTimeout(context.Background(), 200*time.Microsecond)
		_, err := pR.Wait(short)
		cancel()
		release(pR)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("iteration %d: %v, want the deadline", i, err)
		}
		if tr.eng.peers[1].isDown.Load() {
			t.Fatalf("iteration %d: a receive timing out took the healthy link down", i)
		}
	}
}

// Concurrent all-to-alls on one mesh: frames of one operation arrive while
// the engine guesses another's receives, and every guess that misses must
// leave the stream in order. Blocks of 16 KiB, as in the bench.
func TestTCPEngineConcurrentAllToAllExact(t *testing.T) {
	const n, k, block = 3, 4, 4096
	ts := tcpMeshEngine(t, n, 50*time.Microsecond, false)
	comms := worlds(ts, Config{})
	ctx := testCtx(t, 30*time.Second)
	for round := range 20 {
		mustAll(t, runRanks(comms, func(c *Comm) error {
			sends := make([][]float32, k)
			recvs := make([][]float32, k)
			var reqs []*Request
			for j := range k {
				sends[j] = make([]float32, n*block)
				recvs[j] = make([]float32, n*block)
				for i := range sends[j] {
					sends[j][i] = val(c.Rank(), i+j*7+round)
				}
				reqs = append(reqs, c.AllToAllAsync(sends[j], recvs[j]))
			}
			if err := WaitAll(ctx, reqs...); err != nil {
				return err
			}
			for j := range k {
				for p := range n {
					for i := range block {
						if want := val(p, c.Rank()*block+i+j*7+round); recvs[j][p*block+i] != want {
							return fmt.Errorf("round %d op %d from %d [%d] = %v, want %v", round, j, p, i, recvs[j][p*block+i], want)
						}
					}
				}
			}
			return nil
		}))
	}
	checkNoWaiters(t, ts)
	hits, misses := 0, 0
	for _, tr := range ts {
		e := tr.(*tcpTransport).eng
		e.token <- struct{}{}
		hits, misses = hits+e.specHits, misses+e.specMisses
		<-e.token
	}
	t.Logf("guesses: %d right, %d wrong", hits, misses)
	if misses == 0 {
		t.Fatal("no guess was wrong: the test did not reach what it is for")
	}
}

// enginePair is a progress-engine transport of rank 0 whose peer, rank 1,
// is the returned raw connection: a test writes rank 1's frames itself.
func enginePair(t *testing.T, spin time.Duration) (*tcpTransport, *net.TCPConn) {
	t.Helper()
	a, b := loopbackPair(t)
	tr, err := newTCPTransport(TCPConfig{Rank: 0, Addrs: []string{"", ""}, MaxPayload: DefaultMaxPayload,
		SpinWait: spin, ProgressEngine: true}, []*net.TCPConn{nil, a})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr, b
}

// stepHeader is the header of a send-receive of n bytes at the given step.
func stepHeader(step uint32, n int) Header {
	return Header{Op: OpSendRecv, Tag: Tag{Group: 7, Seq: 1, Step: step}, Count: uint64(n)}
}

// A failed all-to-all leaves zeros in recv, in every mode: its receives
// may hold another frame's bytes (the engine guesses into them), and a
// caller that reads on after a failure (the MoE layer turns received floats
// into row counts) must not find garbage there. Rank 1 calls another
// collective, so the all-to-all on rank 0 fails with a desync or an abort.
func TestTCPModesAllToAllFailureZeroes(t *testing.T) {
	for _, m := range tcpModes {
		t.Run(m.name, func(t *testing.T) {
			ts := tcpMeshMode(t, 2, m.engine, m.spin, m.yield)
			comms := worlds(ts, Config{})
			ctx := testCtx(t, 5*time.Second)
			const block = 5000
			errs := runRanks(comms, func(c *Comm) error {
				buf := make([]float32, 2*block)
				for i := range buf {
					buf[i] = float32(i + 1)
				}
				if c.Rank() == 1 {
					return c.AllReduce(ctx, buf, Sum)
				}
				recv := make([]float32, 2*block)
				for i := range recv {
					recv[i] = float32(math.NaN())
				}
				err := c.AllToAll(ctx, buf, recv)
				if err == nil {
					return errors.New("all-to-all against an all-reduce succeeded")
				}
				for i, v := range recv {
					if v != 0 {
						return fmt.Errorf("after %v: recv[%d] = %v, want 0", err, i, v)
					}
				}
				return nil
			})
			if errs[0] != nil {
				t.Fatal(errs[0])
			}
		})
	}
}
