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

// fileWriter appends to a shard file and, with writeback on, has the device
// start writing every writebackEvery bytes (startWriteback). The requests
// are made by a goroutine of its own because sync_file_range blocks while
// the device's queue is full: the writer keeps copying into the page cache
// meanwhile, so a save takes about the longer of the copy and the device
// write instead of their sum. Durability rests on the fsync after stop.
type fileWriter struct {
	f            *os.File
	off, started int64
	kick         chan [2]int64 // byte ranges to start; nil: no writeback
	done         chan struct{}
	bounce       []byte // bufferedWriteBytes, reused: what write(2) copies from
}

func newFileWriter(f *os.File, writeback bool) *fileWriter {
	fw := &fileWriter{f: f, bounce: getBounceBuf()}
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

// bufferedWriteBytes bounds one write into the page cache, and every write
// copies its bytes into the writer's bounce buffer of this size first. On
// the ext4 virtio disk of docs/decisions.md#checkpoint-io-at-disk-bandwidth,
// write(2) from a cache-resident 1 MiB buffer kept up with dd, while the
// same write from the pages of a large heap region (a whole chunk of a
// tensor, which bufio passes straight through) copied into the page cache
// five to ten times slower: the user-space copy into the bounce buffer costs
// far less than it saves.
const bufferedWriteBytes = 1 << 20

func (fw *fileWriter) Write(p []byte) (int, error) {
	if fw.bounce == nil {
		return 0, errors.New("shard file writer: write after stop")
	}
	total := 0
	for len(p) > 0 {
		c := copy(fw.bounce, p)
		n, err := fw.write(fw.bounce[:c])
		total += n
		if err != nil {
			return total, err
		}
		p = p[n:]
	}
	return total, nil
}

func (fw *fileWriter) write(p []byte) (int, error) {
	n, err := fw.f.Write(p)
	fw.off += int64(n)
	if fw.kick != nil && fw.off-fw.started >= writebackEvery {
		select {
		case fw.kick <- [2]int64{fw.started, fw.off - fw.started}:
			fw.started = fw.off
		default: // requests are queued already: a later one covers this range too
		}
	}
	return n, err
}

// stop ends writeback requests and waits for the goroutine making them (it
// uses the file, which may be closed next), and returns the bounce buffer
// to the pool; later writes are left to fsync. stop may be called more
// than once; the writer takes no writes after it.
func (fw *fileWriter) stop() {
	if fw.kick != nil {
		close(fw.kick)
		<-fw.done
		fw.kick = nil
	}
	if fw.bounce != nil {
		putBounceBuf(fw.bounce)
		fw.bounce = nil
	}
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
