//go:build linux

package collective

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// shmMesh builds an n-rank mesh whose ranks sit on hosts[i] (nil: one host
// for all) with rings of ring bytes, and checks which pairs use shared
// memory: exactly those on one host.
func shmMesh(t *testing.T, n int, hosts []string, ring int) []Transport {
	t.Helper()
	return shmMeshEngine(t, n, hosts, ring, false)
}

// shmMeshEngine is shmMesh, with the progress engine moving the TCP pairs'
// bytes when engine is set.
func shmMeshEngine(t *testing.T, n int, hosts []string, ring int, engine bool) []Transport {
	t.Helper()
	if hosts == nil {
		hosts = make([]string, n)
		for i := range hosts {
			hosts[i] = "h"
		}
	}
	ts, errs := dialTestMesh(t, n, 5*time.Second, func(rank int, addrs []string) TCPConfig {
		return TCPConfig{Rank: rank, Addrs: addrs, Token: "shm", Hosts: hosts, ShmRing: ring, ProgressEngine: engine}
	})
	mustAll(t, errs)
	t.Cleanup(func() { closeAllT(ts) })
	for r, tr := range ts {
		for p, pc := range tr.(*tcpTransport).peers {
			if pc == nil {
				continue
			}
			if want := sameHost(hosts, r, p); (pc.shm != nil) != want {
				t.Fatalf("rank %d to %d: shared memory %v, want %v", r, p, pc.shm != nil, want)
			}
		}
	}
	return ts
}

// TestShmCollectives runs the collectives over shared memory (small rings,
// so frames wrap and writers wait for room; and the default) and over a
// mix of shared-memory and TCP pairs, with and without the progress engine
// on the TCP pairs, exactly.
func TestShmCollectives(t *testing.T) {
	cases := []struct {
		name   string
		hosts  []string
		ring   int
		n      int
		engine bool
	}{
		{"ring4K/n=2", nil, 4 << 10, 2, false},
		{"ring4K/n=3", nil, 4 << 10, 3, false},
		{"default/n=5", nil, 0, 5, false},
		{"default/n=8", nil, 0, 8, false},
		{"mixed/n=4", []string{"a", "a", "b", "b"}, 64 << 10, 4, false},
		{"mixed/n=5", []string{"a", "b", "a", "", "b"}, 0, 5, false},
		{"engine-idle/ring4K/n=3", nil, 4 << 10, 3, true}, // no TCP pair: no engine
		{"engine/mixed/n=4", []string{"a", "a", "b", "b"}, 4 << 10, 4, true},
		{"engine/mixed/n=5", []string{"a", "b", "a", "", "b"}, 0, 5, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ts := shmMeshEngine(t, c.n, c.hosts, c.ring, c.engine)
			for cfgName, cfg := range testCfgs {
				comms := worlds(ts, cfg)
				ctx := testCtx(t, 20*time.Second)
				for _, size := range testSizes {
					if c.n == 8 && size > 4099 && cfgName != "default" {
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

func TestShmSubGroupsConcurrent(t *testing.T) {
	subGroupsConcurrent(t, shmMesh(t, 8, nil, 16<<10))
	subGroupsConcurrent(t, shmMeshEngine(t, 8, []string{"a", "a", "a", "a", "b", "b", "b", "b"}, 16<<10, true))
}

// TestShmDeadPeer: a peer that closes mid-operation fails the survivors
// with an error naming it, before the deadline.
func TestShmDeadPeer(t *testing.T) {
	for _, size := range []int{1000, 1<<18 + 3} {
		for _, engine := range []bool{false, true} {
			t.Run(fmt.Sprintf("size=%d/engine=%v", size, engine), func(t *testing.T) {
				deadPeerMidOperation(t, shmMeshEngine(t, 3, []string{"a", "a", "b"}, 0, engine), size)
				deadPeerMidOperation(t, shmMeshEngine(t, 3, nil, 4<<10, engine), size)
			})
		}
	}
}

// TestShmDesync: ranks in different collectives get a *DesyncError, not
// wrong numbers or a hang.
func TestShmDesync(t *testing.T) {
	ts := shmMesh(t, 3, nil, 0)
	comms := worlds(ts, Config{})
	ctx := testCtx(t, 5*time.Second)
	errs := runRanks(comms, func(c *Comm) error {
		size := 1 << 16
		if c.Rank() == 2 {
			size = 1<<16 + 4
		}
		return c.AllReduce(ctx, make([]float32, size), Sum)
	})
	for r, err := range errs {
		var de *DesyncError
		if err == nil || (!errors.As(err, &de) && !strings.Contains(err.Error(), "aborted")) {
			t.Errorf("rank %d: want a desync (or the abort of one), got %v", r, err)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("rank %d: waited for the deadline: %v", r, err)
		}
	}
}

// TestShmSilentPeerTimeout: a peer that stays alive but never sends fails
// the receive at the deadline, and a writer facing a full ring the peer
// never drains fails at its deadline too.
func TestShmSilentPeerTimeout(t *testing.T) {
	ts := shmMesh(t, 2, nil, 4<<10)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := ts[0].Recv(ctx, 1, stepHeader(0, 10), make([]byte, 40))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("receive from a silent peer: %v, want the deadline", err)
	}
	// A writer facing a full ring that nobody drains.
	acc, _ := shmPair(t, 4096)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if err := acc.write(ctx2, make([]byte, 8192)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("write into a ring nobody drains: %v, want the deadline", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("failures took %v", d)
	}
}

// TestShmKilledProcess: a peer process killed without closing anything
// (SIGKILL) fails this rank's receives with an error naming it, within
// the deadline: the kernel closes its liveness connection.
func TestShmKilledProcess(t *testing.T) {
	if os.Getenv("MOETRAIN_SHM_CHILD") != "" {
		shmChild()
		return
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	lns, addrs := listenLoopback(t, 2)
	ln1 := lns[1].(*net.TCPListener)
	f, err := ln1.File()
	if err != nil {
		t.Fatal(err)
	}
	lns[1].Close()
	cmd := exec.Command(exe, "-test.run=^TestShmKilledProcess$")
	cmd.Env = append(os.Environ(), "MOETRAIN_SHM_CHILD="+strings.Join(addrs, ","))
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	defer cmd.Process.Kill()
	ctx := testCtx(t, 10*time.Second)
	tr, err := DialMesh(ctx, lns[0], TCPConfig{Rank: 0, Addrs: addrs, Token: "kill", Hosts: []string{"h", "h"}})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if tr.(*tcpTransport).peers[1].shm == nil {
		t.Fatal("the pair is not on shared memory")
	}
	// The child sends one frame, then waits to be killed.
	got := make([]byte, 8)
	if _, err := tr.Recv(ctx, 1, stepHeader(0, 2), got); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = tr.Recv(ctx, 1, stepHeader(1, 2), got)
	var pe *PeerError
	if !errors.As(err, &pe) || pe.Peer != 1 {
		t.Fatalf("receive from a killed peer: %v, want a *PeerError naming rank 1", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %v to notice the killed peer", d)
	}
	_ = cmd.Wait()
}

// shmChild is rank 1 of TestShmKilledProcess.
func shmChild() {
	addrs := strings.Split(os.Getenv("MOETRAIN_SHM_CHILD"), ",")
	ln, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr, err := DialMesh(ctx, ln, TCPConfig{Rank: 1, Addrs: addrs, Token: "kill", Hosts: []string{"h", "h"}})
	if err != nil {
		os.Exit(3)
	}
	_ = tr.Send(ctx, 0, stepHeader(0, 2), make([]byte, 8))
	<-ctx.Done()
	os.Exit(0)
}

// TestShmFallback: ranks the plan puts on one host that cannot open each
// other's ring file stay on TCP, and work; a disabled ring keeps TCP too.
func TestShmFallback(t *testing.T) {
	ts := shmMesh(t, 2, []string{"x", "y"}, 0)
	mustAll(t, runRanks(worlds(ts, Config{}), func(c *Comm) error {
		return collectivesRound(testCtx(t, 5*time.Second), c, 1000)
	}))
	ts2, errs := dialTestMesh(t, 2, 5*time.Second, func(rank int, addrs []string) TCPConfig {
		return TCPConfig{Rank: rank, Addrs: addrs, Token: "shm", Hosts: []string{"h", "h"}, ShmRing: ShmDisabled}
	})
	mustAll(t, errs)
	defer closeAllT(ts2)
	if ts2[0].(*tcpTransport).peers[1].shm != nil {
		t.Fatal("ShmDisabled: pair on shared memory")
	}
	// An offer of a file the dialer cannot find, or not a ring file.
	if f, err := openShm(shmFileName(os.Getpid(), strings.Repeat("0", 32)), 4096, [16]byte{}); err == nil {
		f.release()
		t.Fatal("opened a ring file that does not exist")
	}
	for _, bad := range []string{"/etc/passwd", "/dev/shm/moetrain-../../etc/x", shmPrefix + "zz",
		shmPrefix + strings.Repeat("0", 41), shmPrefix + "0000000g-" + strings.Repeat("0", 32)} {
		if validShmName(bad) {
			t.Errorf("%q accepted as a ring file name", bad)
		}
	}
}

// TestShmNoFilesLeft: the ring files are unlinked once both sides mapped
// them.
func TestShmNoFilesLeft(t *testing.T) {
	before, _ := filepath.Glob("/dev/shm/moetrain-*")
	shmMesh(t, 4, nil, 0)
	after, _ := filepath.Glob("/dev/shm/moetrain-*")
	if len(after) > len(before) {
		t.Fatalf("ring files left in /dev/shm: %v", after)
	}
}

// TestShmBadCapacity: DialMesh refuses a ring size that is not a power of
// two in range.
func TestShmBadCapacity(t *testing.T) {
	for _, n := range []int{1000, 1 << 11, 3 << 20, 1 << 31} {
		_, err := DialMesh(context.Background(), nil, TCPConfig{Rank: 0, Addrs: []string{"x"}, Token: "t", ShmRing: n})
		if err == nil || !strings.Contains(err.Error(), "power of two") {
			t.Errorf("ShmRing %d: %v", n, err)
		}
	}
}

// shmPair maps one ring file from both ends in this process.
func shmPair(t testing.TB, ring int) (acc, dial *shmLink) {
	t.Helper()
	f, err := createShm(ring)
	if err != nil {
		t.Fatal(err)
	}
	g, err := openShm(f.name, uint64(ring), f.cookie)
	f.unlink()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.release(); g.release() })
	return f.link(true), g.link(false)
}

// TestShmRingStream: bytes written in pieces of every size come out in
// order through a small ring, across wraps, read in pieces of other sizes.
func TestShmRingStream(t *testing.T) {
	acc, dial := shmPair(t, 4096)
	const total = 1 << 20
	src := make([]byte, total)
	for i := range src {
		src[i] = byte(i*31 + i>>8)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	var werr error
	go func() {
		defer wg.Done()
		ctx := testCtx(t, 10*time.Second)
		for off, k := 0, 1; off < total; k = k*7%5003 + 1 {
			n := min(k, total-off)
			if werr = acc.write(ctx, src[off:off+n]); werr != nil {
				return
			}
			off += n
		}
	}()
	got := make([]byte, 0, total)
	buf := make([]byte, 6000)
	for k := 1; len(got) < total; k = k*5%5999 + 1 {
		n, err := dial.Read(buf[:min(k, total-len(got))])
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	wg.Wait()
	if werr != nil {
		t.Fatal(werr)
	}
	if string(got) != string(src) {
		t.Fatal("bytes out of the ring differ from those written")
	}
}

// FuzzShmStream is FuzzReaderStream for a shared-memory ring: arbitrary
// bytes written in arbitrary pieces to the ring, then the peer's liveness
// connection closes. Lengths are bounded as over TCP; see fuzzStream.
func FuzzShmStream(f *testing.F) {
	fuzzStreamSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte, piece uint16) {
		const maxPayload, maxBuffered = 1 << 16, 1 << 17
		a, b := loopbackPair(t)
		_ = a.SetLinger(0)
		_ = b.SetLinger(0)
		peer, mine := shmPair(t, 4096)
		peer.setBell(b) // the peer's doorbells reach mine through a
		tr, err := newTCPTransportShm(TCPConfig{Rank: 0, Addrs: []string{"", ""}, MaxPayload: maxPayload, MaxBuffered: maxBuffered},
			[]*net.TCPConn{nil, a}, []*shmLink{nil, mine})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() {
			step := max(int(piece)%4096+1, len(data)/64)
			for off := 0; off < len(data); off += step {
				if peer.write(ctx, data[off:min(off+step, len(data))]) != nil {
					return // the transport gave up on the link
				}
			}
			_ = b.Close()
		})
		defer func() { // also after a failed check: the rings stay mapped until nobody uses them
			cancel()
			peer.shutdown(errors.New("test over"))
			wg.Wait()
			tr.Close()
		}()
		checkFuzzedStream(t, tr, data, maxPayload, maxBuffered)
	})
}

// TestShmCorruptPositions: a peer that writes over the ring's control
// words fails the link with an error saying so, whichever side reads them.
func TestShmCorruptPositions(t *testing.T) {
	acc, dial := shmPair(t, 4096)
	acc.out.head.Store(1 << 40) // dial reads a write position far past its own
	if _, err := dial.Read(make([]byte, 8)); !errors.Is(err, errShmCorrupt) {
		t.Errorf("read with a corrupt write position: %v", err)
	}
	dial.out.tail.Store(1 << 40) // a read position ahead of dial's writes
	if err := dial.write(testCtx(t, time.Second), make([]byte, 8)); !errors.Is(err, errShmCorrupt) {
		t.Errorf("write with a corrupt read position: %v", err)
	}
}

// TestShmHierAllToAll: the hierarchical all-to-all over TCP between hosts
// and shared memory within them (with and without the progress engine),
// synchronous and two asynchronous at once, exactly.
func TestShmHierAllToAll(t *testing.T) {
	for _, engine := range []bool{false, true} {
		hosts := hierLayouts[1]
		t.Run(fmt.Sprintf("tcp/engine=%v", engine), func(t *testing.T) {
			ts := shmMeshEngine(t, len(hosts), hosts, 16<<10, engine)
			comms := worlds(ts, Config{HierAllToAll: true})
			if _, _, ok := comms[0].groupsByHost(); !ok {
				t.Fatal("the transport's hosts were not used")
			}
			ctx := testCtx(t, 10*time.Second)
			for _, b := range []int{1, 4099, 1 << 16} {
				mustAll(t, runRanks(comms, func(c *Comm) error { return checkAllToAll(ctx, c, b) }))
				// Asynchronous too, two at once.
				mustAll(t, runRanks(comms, func(c *Comm) error {
					n := c.Size()
					s1, r1 := make([]float32, n*b), make([]float32, n*b)
					s2, r2 := make([]float32, n*b), make([]float32, n*b)
					for i := range s1 {
						s1[i], s2[i] = float32(c.Rank()*n*b+i), -float32(c.Rank()*n*b+i)
					}
					if err := WaitAll(ctx, c.AllToAllAsync(s1, r1), c.AllToAllAsync(s2, r2)); err != nil {
						return err
					}
					for s := range n {
						for i := range b {
							if w := float32(s*n*b + c.Rank()*b + i); r1[s*b+i] != w || r2[s*b+i] != -w {
								return fmt.Errorf("async alltoall: from %d element %d = %v, %v, want ±%v", s, i, r1[s*b+i], r2[s*b+i], w)
							}
						}
					}
					return nil
				}))
			}
			checkNoWaiters(t, ts)
		})
	}
}

// TestShmRingBudget: default rings shrink with the number of peers on the
// host, so a host's rings stay within ShmBudget per rank.
func TestShmRingBudget(t *testing.T) {
	hosts := func(n int) []string { return slices.Repeat([]string{"h"}, n) }
	cases := []struct {
		cfg  TCPConfig
		want int
	}{
		{TCPConfig{Rank: 0, Hosts: hosts(2)}, DefaultShmRing},
		{TCPConfig{Rank: 1, Hosts: hosts(4)}, DefaultShmRing},
		{TCPConfig{Rank: 0, Hosts: hosts(8)}, 2 << 20},
		{TCPConfig{Rank: 5, Hosts: hosts(128)}, 128 << 10},
		{TCPConfig{Rank: 0, Hosts: hosts(100000)}, shmMinRing},
		{TCPConfig{Rank: 0, Hosts: hosts(128), ShmRing: 1 << 20}, 1 << 20},
		{TCPConfig{Rank: 0, Hosts: hosts(2), ShmRing: ShmDisabled}, 0},
	}
	for _, c := range cases {
		got := shmRingBytes(c.cfg)
		if got != c.want {
			t.Errorf("%d ranks on the host, ShmRing %d: ring %d, want %d", len(c.cfg.Hosts), c.cfg.ShmRing, got, c.want)
		}
		if k := len(c.cfg.Hosts) - 1; c.cfg.ShmRing == 0 && got > shmMinRing && k*2*got > ShmBudget {
			t.Errorf("%d peers × 2 × %d bytes exceed the budget", k, got)
		}
	}
}

// TestShmSweep: a ring file left by a process that no longer exists is
// removed when the next one is created; a live process's is kept.
func TestShmSweep(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skip("no process to outlive:", err)
	}
	dead := shmFileName(cmd.Process.Pid, strings.Repeat("a", 32))
	live := shmFileName(os.Getpid(), strings.Repeat("b", 32))
	for _, p := range []string{dead, live} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(p) })
	}
	shmSweepMu.Lock()
	shmSwept = time.Time{}
	shmSweepMu.Unlock()
	shmPair(t, 4096)
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("the dead process's ring file is still there: %v", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("a live process's ring file was removed: %v", err)
	}
}
