package checkpoint

import (
	"errors"
	"os"
)

// writebackEvery is how many bytes a shard writer appends to its file
// between two requests to start writeback: large enough that the device gets
// long sequential runs, small enough that it starts early and that the final
// fsync waits for little. Tests lower it.
var writebackEvery = int64(8 << 20)

// testWritebackHook, set by tests, sees every range a fileWriter asks the
// kernel to start writing, after the request.
var testWritebackHook func(off, n int64)

// fileWriter is the shard sink through the page cache: it collects the
// stream in a bounce buffer of bufferedWriteBytes and writes it to the file
// a full buffer at a time, and, with writeback on, has the device start
// writing every writebackEvery bytes (startWriteback). The requests are
// made by a goroutine of its own because sync_file_range blocks while the
// device's queue is full: the writer keeps copying into the page cache
// meanwhile, so a save takes about the longer of the copy and the device
// write instead of their sum. Durability rests on the fsync after finish.
type fileWriter struct {
	f            *os.File
	buf          []byte // the bounce buffer: what write(2) copies from; nil after finish
	err          error  // the first write error; every later Write and finish return it
	off, started int64
	kick         chan [2]int64 // byte ranges to start; nil: no writeback
	done         chan struct{}
}

func newFileWriter(f *os.File, writeback bool) *fileWriter {
	fw := &fileWriter{f: f, buf: getBounceBuf()[:0]}
	if writeback {
		fw.kick = make(chan [2]int64, 4)
		fw.done = make(chan struct{})
		go func() {
			defer close(fw.done)
			for r := range fw.kick {
				startWriteback(f, r[0], r[1])
				if testWritebackHook != nil {
					testWritebackHook(r[0], r[1])
				}
			}
		}()
	}
	return fw
}

// bufferedWriteBytes is the size of one write into the page cache and of
// the bounce buffer it is copied from. On the ext4 virtio disk of
// docs/decisions.md#checkpoint-io-at-disk-bandwidth, write(2) from a
// cache-resident 1 MiB buffer kept up with dd, while the same write from
// the pages of a large heap region (a chunk of a tensor) copied into the
// page cache several times slower: the user-space copy into the bounce
// buffer costs far less than it saves.
const bufferedWriteBytes = 1 << 20

func (fw *fileWriter) Write(p []byte) (int, error) {
	if fw.buf == nil {
		return 0, errors.New("shard file writer: write after finish")
	}
	if fw.err != nil {
		return 0, fw.err
	}
	total := 0
	for len(p) > 0 {
		n := copy(fw.buf[len(fw.buf):cap(fw.buf)], p)
		fw.buf = fw.buf[:len(fw.buf)+n]
		total, p = total+n, p[n:]
		if len(fw.buf) == cap(fw.buf) {
			if err := fw.flush(); err != nil {
				return total, err
			}
		}
	}
	return total, nil
}

// flush writes the buffered bytes and asks for writeback once
// writebackEvery bytes have been written since the last request.
func (fw *fileWriter) flush() error {
	n, err := fw.f.Write(fw.buf)
	if err != nil && fw.err == nil {
		fw.err = err
	}
	fw.off += int64(n)
	fw.buf = fw.buf[:0]
	if fw.kick != nil && fw.off-fw.started >= writebackEvery {
		select {
		case fw.kick <- [2]int64{fw.started, fw.off - fw.started}:
			fw.started = fw.off
		default: // requests are queued already: a later one covers this range too
		}
	}
	return fw.err
}

// finish writes what is buffered, ends writeback requests and waits for
// the goroutine making them (it uses the file, which may be closed next),
// and returns the bounce buffer to the pool; later writes are refused and
// the rest is left to fsync. It returns the first write error.
func (fw *fileWriter) finish() error {
	if fw.buf != nil {
		if fw.err == nil {
			_ = fw.flush() // its error is fw.err
		}
		putBounceBuf(fw.buf[:cap(fw.buf)])
		fw.buf = nil
	}
	if fw.kick != nil {
		close(fw.kick)
		<-fw.done
		fw.kick = nil
	}
	return fw.err
}

// bounceBufs keeps freed bounce buffers for the next shard.
var bounceBufs = make(chan []byte, 8)

func getBounceBuf() []byte {
	select {
	case b := <-bounceBufs:
		return b
	default:
		return make([]byte, bufferedWriteBytes)
	}
}

func putBounceBuf(b []byte) {
	select {
	case bounceBufs <- b:
	default:
	}
}
