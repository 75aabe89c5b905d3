package checkpoint

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// A buffered shard writer with fsync on asks for writeback of every byte range it has
// appended, in order, each range once and at least writebackEvery long; with
// fsync off it asks for none. The shard reads back exactly either way.
func TestShardWriterStartsWriteback(t *testing.T) {
	defer func(n int64) { writebackEvery = n }(writebackEvery)
	writebackEvery = 64 << 10
	for _, noSync := range []bool{false, true} {
		var mu sync.Mutex
		var ranges [][2]int64
		testWritebackHook = func(off, n int64) {
			mu.Lock()
			defer mu.Unlock()
			ranges = append(ranges, [2]int64{off, n})
		}
		rng := rand.New(rand.NewPCG(31, 32))
		tensor := noiseTensor(rng, "model.w", 1<<20) // 4 MiB: a range per 1 MiB buffer flush
		s := newTestStore(t, 0)
		s.NoSync = noSync
		w, err := s.CreateShard(context.Background(), 1, 0, WriterOptions{ChunkBytes: 256 << 10, Workers: 2})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.WriteTensor(tensor.name, tensor.shape, Whole(tensor.shape), tensor.data); err != nil {
			t.Fatal(err)
		}
		info, err := w.Close()
		testWritebackHook = nil
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		got := ranges
		mu.Unlock()
		if noSync {
			if len(got) != 0 {
				t.Fatalf("NoSync: %d writeback requests, want none", len(got))
			}
		} else {
			if len(got) < 2 {
				t.Fatalf("%d writeback requests for a %d-byte shard, want several", len(got), info.Size)
			}
			var end int64
			for i, r := range got {
				if r[0] != end || r[1] < writebackEvery {
					t.Fatalf("request %d: [%d, +%d) after the bytes up to %d; want it to start there and span >= %d",
						i, r[0], r[1], end, writebackEvery)
				}
				end = r[0] + r[1]
			}
			if end > info.Size {
				t.Fatalf("writeback requested up to %d of a %d-byte shard", end, info.Size)
			}
		}
		commitAndCheck(t, s, info, tensor)
	}
}

// A write error sticks: the Write that hits it, every later Write and
// finish return it; a Write after finish is refused.
func TestFileWriterErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path) // read-only: every write fails
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fw := newFileWriter(f, false)
	if _, err := fw.Write(make([]byte, 2*bufferedWriteBytes)); err == nil {
		t.Fatal("a write through a read-only file succeeded")
	}
	first := fw.err
	if _, err := fw.Write([]byte{1}); err != first {
		t.Fatalf("a later write returned %v, want the first error %v", err, first)
	}
	if err := fw.finish(); err != first {
		t.Fatalf("finish returned %v, want the first error %v", err, first)
	}
	if _, err := fw.Write([]byte{1}); err == nil || !strings.Contains(err.Error(), "after finish") {
		t.Fatalf("a write after finish: %v", err)
	}
}
