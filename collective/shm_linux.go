//go:build linux

package collective

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A ring file: a header page, then one ring per direction (0: acceptor to
// dialer, 1: dialer to acceptor). Each direction has a control block of
// two cache-line-separated halves, one written by its producer (head: bytes
// written so far) and one by its consumer (tail: bytes read so far; rwait:
// the consumer is about to sleep and wants a doorbell). Positions only
// grow; a byte at position x lives at data[x mod ring]. Each side keeps its
// own position locally and only publishes it, and checks the other's
// against it, so a peer that scribbles over the control words fails the
// link (errShmCorrupt) instead of making this rank read out of bounds.
//
// Waiting: a reader that finds its ring empty checks for shmSpin, then
// blocks reading the pair's TCP connection, where the writer sends one
// doorbell byte if it finds rwait set after publishing (so the goroutine
// parks in the runtime's network poller and gives up its thread, which a
// futex wait in a system call would hold: with one GOMAXPROCS per rank
// that stalls the rank). The connection's end is the peer's death. A
// writer that finds the ring full checks for shmSpin, then sleeps in
// growing naps (rings are large: a full one takes hundreds of
// microseconds to drain).
const (
	shmFileMagic = 0x31764d4853544d // "MTSHMv1"
	shmHeader    = 4096
	shmCtl       = 1024 // control block of direction d at shmCtl + d*shmCtl
	offHead      = 0
	offTail      = 256
	offRWait     = 264
)

// shmSpin is how long a reader or writer that finds its ring empty or full
// keeps checking (yielding to the rank's other goroutines in between)
// before it sleeps: a peer that answers within it costs no wake-up. As
// the progress engine's AutoSpin; 20 µs let most small all-reduces at
// np=2 sleep and wake.
const shmSpin = 200 * time.Microsecond

// shmDoorbell is the byte a writer sends on the connection to wake a
// sleeping reader.
const shmDoorbell = 'd'

// shmMaxNap bounds one nap of a writer waiting for room (and of a reader
// without a connection, in tests).
const shmMaxNap = time.Millisecond

type shmFile struct {
	name   string
	cookie [16]byte
	mem    []byte
	ring   int
}

func shmSize(ring int) int { return shmHeader + 2*ring }

// createShm creates, sizes (allocating the pages, so a full /dev/shm is an
// error here rather than SIGBUS later) and maps a ring file.
func createShm(ring int) (*shmFile, error) {
	var rnd [32]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	sweepShm()
	f := &shmFile{name: shmFileName(os.Getpid(), hex.EncodeToString(rnd[:16])), ring: ring}
	copy(f.cookie[:], rnd[16:])
	fd, err := unix.Open(f.name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", f.name, err)
	}
	defer unix.Close(fd)
	if err := unix.Fallocate(fd, 0, 0, int64(shmSize(ring))); err != nil {
		_ = unix.Unlink(f.name)
		return nil, fmt.Errorf("allocate %d bytes in %s: %w", shmSize(ring), f.name, err)
	}
	if f.mem, err = unix.Mmap(fd, 0, shmSize(ring), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		_ = unix.Unlink(f.name)
		return nil, fmt.Errorf("map %s: %w", f.name, err)
	}
	binary.LittleEndian.PutUint64(f.mem[8:], uint64(ring))
	copy(f.mem[16:32], f.cookie[:])
	binary.LittleEndian.PutUint64(f.mem[0:], shmFileMagic)
	return f, nil
}

// sweepShm removes the ring files of processes that no longer exist: one
// killed between creating a file and its peer's answer leaves it behind.
// At most once per shmSweepEvery; a file of a live process (or of one in
// another PID namespace, which looks dead) whose peer has not opened it
// yet makes that pair fall back to TCP, nothing worse.
func sweepShm() {
	shmSweepMu.Lock()
	defer shmSweepMu.Unlock()
	if time.Since(shmSwept) < shmSweepEvery {
		return
	}
	shmSwept = time.Now()
	entries, err := os.ReadDir(filepath.Dir(shmPrefix))
	if err != nil {
		return
	}
	for _, e := range entries {
		path := filepath.Join(filepath.Dir(shmPrefix), e.Name())
		pid, ok := shmFilePID(path)
		if ok && pid > 0 && unix.Kill(pid, 0) == unix.ESRCH {
			_ = unix.Unlink(path)
		}
	}
}

var (
	shmSweepMu sync.Mutex
	shmSwept   time.Time
)

const shmSweepEvery = 10 * time.Second

// openShm maps the ring file an offer names, if it is what the offer says.
func openShm(name string, ring uint64, cookie [16]byte) (*shmFile, error) {
	if !validShmName(name) {
		return nil, fmt.Errorf("offer names %q, not a ring file", name)
	}
	if checkShmRing(int(min(ring, shmMaxRing+1))) != nil || ring == 0 {
		return nil, fmt.Errorf("offer has a ring of %d bytes", ring)
	}
	fd, err := unix.Open(name, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	if st.Size != int64(shmSize(int(ring))) {
		return nil, fmt.Errorf("%s has %d bytes, want %d", name, st.Size, shmSize(int(ring)))
	}
	mem, err := unix.Mmap(fd, 0, shmSize(int(ring)), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, err
	}
	f := &shmFile{name: name, cookie: cookie, mem: mem, ring: int(ring)}
	if binary.LittleEndian.Uint64(mem[0:]) != shmFileMagic || binary.LittleEndian.Uint64(mem[8:]) != ring ||
		[16]byte(mem[16:32]) != cookie {
		f.release()
		return nil, fmt.Errorf("%s is not the offered ring file", name)
	}
	return f, nil
}

func (f *shmFile) unlink() { _ = unix.Unlink(f.name) }

// release unmaps f; nil-safe.
func (f *shmFile) release() {
	if f != nil && f.mem != nil {
		_ = unix.Munmap(f.mem)
		f.mem = nil
	}
}

// link returns the rings of f as seen by the acceptor or the dialer.
func (f *shmFile) link(acceptor bool) *shmLink {
	out, in := 0, 1
	if !acceptor {
		out, in = 1, 0
	}
	return &shmLink{f: f, in: f.dir(in), out: f.dir(out)}
}

func (f *shmFile) dir(d int) shmRing {
	ctl := shmCtl + d*shmCtl
	u64 := func(off int) *atomic.Uint64 { return (*atomic.Uint64)(unsafe.Pointer(&f.mem[ctl+off])) }
	base := shmHeader + d*f.ring
	return shmRing{
		head: u64(offHead), tail: u64(offTail),
		rwait: (*atomic.Uint32)(unsafe.Pointer(&f.mem[ctl+offRWait])),
		data:  f.mem[base : base+f.ring : base+f.ring],
		size:  uint64(f.ring),
		file:  f, dir: d,
	}
}

// shmRing is one direction of a ring file.
type shmRing struct {
	head, tail *atomic.Uint64
	rwait      *atomic.Uint32
	data       []byte
	size       uint64
	file       *shmFile // for the race detector's view (shm_race.go)
	dir        int
}

// shmLink is this rank's end of a ring file: it reads in (as an io.Reader,
// for the frame reader of tcpTransport) and writes frames to out.
type shmLink struct {
	f       *shmFile
	in, out shmRing
	rpos    uint64   // consumed of in; reader only
	wpos    uint64   // produced into out; writer only (under the peer's wlock)
	bell    net.Conn // the pair's connection: doorbells and liveness (nil in tests: naps)
	bellBuf [64]byte // reader only
	// down: the link failed or the transport closes; gone: the peer's
	// connection ended (read what the ring holds, then fail).
	down, gone atomic.Bool
	mu         sync.Mutex // orders failures before the unmap
	err        error      // why down or gone; guarded by mu
}

func (l *shmLink) cause() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// setBell makes c the link's doorbell and liveness.
func (l *shmLink) setBell(c net.Conn) { l.bell = c }

// shutdown fails the link: waiting readers and writers return err (a
// reader blocked on the connection wakes when the caller closes it).
func (l *shmLink) shutdown(err error) { l.fail(err, &l.down) }

func (l *shmLink) fail(err error, flag *atomic.Bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == nil {
		l.err = err
	}
	flag.Store(true)
}

// Read implements io.Reader over the incoming ring. It blocks until a byte
// is there; it fails once the link is down, or the peer is gone and the
// ring empty.
func (l *shmLink) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	r := &l.in
	avail, err := l.readable()
	if err == nil && avail == 0 {
		avail, err = l.awaitRead()
	}
	if err != nil {
		return 0, err
	}
	n := min(uint64(len(b)), avail)
	off := l.rpos & (r.size - 1)
	k := copy(b[:n], r.data[off:])
	if uint64(k) < n {
		copy(b[k:n], r.data)
	}
	l.rpos += n
	r.tail.Store(l.rpos)
	r.racePublish(true)
	return int(n), nil
}

// readable returns how many bytes the incoming ring holds.
func (l *shmLink) readable() (uint64, error) {
	if l.down.Load() {
		return 0, l.cause()
	}
	avail := l.in.head.Load() - l.rpos
	l.in.raceObserve(false)
	if avail > l.in.size {
		return 0, fmt.Errorf("%w: the peer's write position is %d bytes past this rank's read position in a ring of %d", errShmCorrupt, avail, l.in.size)
	}
	if avail == 0 && l.gone.Load() {
		return 0, l.cause()
	}
	return avail, nil
}

// awaitRead waits for bytes in the incoming ring (see the waiting rules
// above).
func (l *shmLink) awaitRead() (uint64, error) {
	start := time.Now()
	for i := 0; ; i++ {
		if avail, err := l.readable(); err != nil || avail > 0 {
			return avail, err
		}
		if i&63 == 63 {
			if time.Since(start) > shmSpin {
				break
			}
			runtime.Gosched()
		}
	}
	nap := time.Microsecond
	for {
		l.in.rwait.Store(1)
		if avail, err := l.readable(); err != nil || avail > 0 {
			l.in.rwait.Store(0)
			return avail, err
		}
		if l.bell == nil {
			time.Sleep(nap)
			nap = min(2*nap, shmMaxNap)
			continue
		}
		n, err := l.bell.Read(l.bellBuf[:])
		for _, c := range l.bellBuf[:n] {
			if c != shmDoorbell {
				return 0, fmt.Errorf("%w: byte %#x on the connection of a shared-memory link", ErrBadFrame, c)
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("connection closed by peer")
			}
			l.fail(err, &l.gone) // what the ring holds is still read
		}
	}
}

// writable returns how many bytes fit in the outgoing ring.
func (l *shmLink) writable() (uint64, error) {
	if l.down.Load() || l.gone.Load() {
		return 0, l.cause()
	}
	used := l.wpos - l.out.tail.Load()
	l.out.raceObserve(true)
	if used > l.out.size {
		return 0, fmt.Errorf("%w: the peer's read position is %d bytes behind this rank's write position in a ring of %d", errShmCorrupt, used, l.out.size)
	}
	return l.out.size - used, nil
}

// room is what fits in the outgoing ring now (0 on a failed link).
func (l *shmLink) room() uint64 {
	n, err := l.writable()
	if err != nil {
		return 0
	}
	return n
}

// writeFrame writes the header and parts to the outgoing ring, waiting
// for room until ctx ends. Callers serialise writes (the peer's wlock). A
// frame cut short by an error leaves the ring unusable (as a TCP stream).
func (l *shmLink) writeFrame(ctx context.Context, hdr []byte, parts [][]byte) error {
	if err := l.write(ctx, hdr); err != nil {
		return err
	}
	for _, p := range parts {
		if err := l.write(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

func (l *shmLink) write(ctx context.Context, b []byte) error {
	r := &l.out
	for len(b) > 0 {
		room, err := l.writable()
		if err == nil && room == 0 {
			room, err = l.awaitRoom(ctx)
		}
		if err != nil {
			return err
		}
		n := min(uint64(len(b)), room)
		off := l.wpos & (r.size - 1)
		k := copy(r.data[off:], b[:n])
		if uint64(k) < n {
			copy(r.data, b[k:n])
		}
		l.wpos += n
		r.head.Store(l.wpos)
		r.racePublish(false)
		if r.rwait.Load() != 0 && r.rwait.CompareAndSwap(1, 0) && l.bell != nil {
			// The reader sleeps, or is about to: ring. A failed write
			// means the connection is gone, which the reader learns.
			_, _ = l.bell.Write([]byte{shmDoorbell})
		}
		b = b[n:]
	}
	return nil
}

// awaitRoom waits for room in the outgoing ring until ctx ends.
func (l *shmLink) awaitRoom(ctx context.Context) (uint64, error) {
	start := time.Now()
	nap := time.Microsecond
	for i := 0; ; i++ {
		if room, err := l.writable(); err != nil || room > 0 {
			return room, err
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if time.Since(start) < shmSpin {
			if i&63 == 63 {
				runtime.Gosched()
			}
			continue
		}
		time.Sleep(nap)
		nap = min(2*nap, shmMaxNap)
	}
}

// unmap releases the ring file; callers make sure nobody reads or writes
// it any more.
func (l *shmLink) unmap() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.f.release()
}
