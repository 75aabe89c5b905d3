package checkpoint

import "os"

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
}

func newFileWriter(f *os.File, writeback bool) *fileWriter {
	fw := &fileWriter{f: f}
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

// bufferedWriteBytes bounds one write into the page cache. On the ext4
// virtio disk of docs/decisions.md#checkpoint-io-at-disk-bandwidth, 1 MiB
// writes with early writeback kept up with dd while 4 MiB writes (a whole
// chunk, which bufio passes straight through) reached a third of it.
const bufferedWriteBytes = 1 << 20

func (fw *fileWriter) Write(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		n, err := fw.write(p[:min(len(p), bufferedWriteBytes)])
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
// uses the file, which may be closed next); later writes are left to fsync.
// stop may be called more than once.
func (fw *fileWriter) stop() {
	if fw.kick != nil {
		close(fw.kick)
		<-fw.done
		fw.kick = nil
	}
}
