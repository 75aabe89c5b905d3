package checkpoint

import (
	"errors"
	"os"
	"sync"
	"unsafe"
)

// Direct I/O write path (WriterOptions.DirectIO). Where the file system
// takes O_DIRECT, the file writer fills aligned blocks of directBlock bytes
// and directDepth goroutines write them at their offsets, so the device has
// several large writes queued while the next block is filled, and nothing
// goes through the page cache. The tail is padded to directAlign, written,
// and the file truncated to its length. The fsync on Close still makes the
// file durable (metadata and the device's cache). The default is the page
// cache (writeback.go): on the disk the project measures on, direct writes
// were slower and far less steady
// (docs/decisions.md#checkpoint-io-at-disk-bandwidth).

var (
	// directBlock is the size of one direct write: large enough that the
	// device gets long sequential requests. A multiple of directAlign.
	directBlock = 4 << 20
	// directDepth is how many blocks are being written at once by a shard.
	directDepth = 3
)

// directAlign is the alignment of direct writes (offsets, lengths and
// buffer addresses): the page size, a multiple of every common logical
// block size.
const directAlign = 4096

// directBufs keeps freed blocks for the next shard: a save allocates no
// new memory for them after the first.
var directBufs = make(chan []byte, 16)

func getDirectBuf() []byte {
	select {
	case b := <-directBufs:
		if cap(b) == directBlock {
			return b[:0]
		}
	default:
	}
	return alignedBuf(directBlock)[:0]
}

// alignedBuf returns n bytes whose address is a multiple of directAlign.
func alignedBuf(n int) []byte {
	b := make([]byte, n+directAlign)
	off := int(-uintptr(unsafe.Pointer(&b[0])) & (directAlign - 1))
	return b[off : off+n : off+n]
}

func putDirectBuf(b []byte) {
	select {
	case directBufs <- b[:0]:
	default:
	}
}

type directWrite struct {
	b   []byte
	off int64
}

// directWriter appends to f, opened with O_DIRECT, through aligned blocks
// written by directDepth goroutines. Write and finish are called by one
// goroutine. If the file system refuses a direct write (EINVAL), the file
// is switched to buffered I/O and the write repeated, so a save never fails
// for the file system's lack of support.
type directWriter struct {
	f    *os.File
	buf  []byte // the block being filled
	off  int64  // file offset of buf[0]
	free chan []byte
	io   chan directWrite
	wg   sync.WaitGroup

	mu       sync.Mutex
	err      error
	buffered bool // O_DIRECT was cleared after a refused write
}

func newDirectWriter(f *os.File) *directWriter {
	w := &directWriter{f: f, free: make(chan []byte, directDepth+1), io: make(chan directWrite)}
	for i := 0; i < directDepth; i++ {
		w.free <- getDirectBuf()
	}
	w.buf = getDirectBuf()
	for i := 0; i < directDepth; i++ {
		w.wg.Add(1)
		go w.ioLoop()
	}
	return w
}

func (w *directWriter) ioLoop() {
	defer w.wg.Done()
	for r := range w.io {
		if w.firstErr() == nil {
			if err := w.writeAt(r.b, r.off); err != nil {
				w.setErr(err)
			}
		}
		w.free <- r.b[:0]
	}
}

func (w *directWriter) writeAt(b []byte, off int64) error {
	_, err := w.f.WriteAt(b, off)
	if err != nil && isInvalid(err) {
		w.mu.Lock()
		if !w.buffered {
			if cerr := clearDirect(w.f); cerr != nil {
				w.mu.Unlock()
				return errors.Join(err, cerr)
			}
			w.buffered = true
		}
		w.mu.Unlock()
		_, err = w.f.WriteAt(b, off)
	}
	return err
}

func (w *directWriter) firstErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *directWriter) setErr(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
}

// Write copies p into blocks, handing each full block to the writers.
func (w *directWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if err := w.firstErr(); err != nil {
			return n - len(p), err
		}
		k := copy(w.buf[len(w.buf):cap(w.buf)], p)
		w.buf = w.buf[:len(w.buf)+k]
		p = p[k:]
		if len(w.buf) == cap(w.buf) {
			w.io <- directWrite{w.buf, w.off}
			w.off += int64(len(w.buf))
			w.buf = <-w.free
		}
	}
	return n, nil
}

// finish writes the last, partial block (padded to directAlign), waits for
// every write, truncates the padding away and returns the first error. It
// also ends the writers when an error came first, so it is always called.
func (w *directWriter) finish() error {
	tail := len(w.buf)
	size := w.off + int64(tail)
	if tail > 0 && w.firstErr() == nil {
		padded := (tail + directAlign - 1) &^ (directAlign - 1)
		b := w.buf[:padded]
		clear(b[tail:])
		w.io <- directWrite{b, w.off}
		w.buf = <-w.free
	}
	close(w.io)
	w.wg.Wait()
	close(w.free)
	for b := range w.free {
		putDirectBuf(b)
	}
	putDirectBuf(w.buf)
	w.buf = nil
	if err := w.firstErr(); err != nil {
		return err
	}
	if size%directAlign != 0 {
		if err := w.f.Truncate(size); err != nil {
			return err
		}
	}
	return nil
}
