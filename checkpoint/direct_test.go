package checkpoint

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// smallDirectBlocks makes direct writes 8 KiB long, two at a time, so small
// files cross many block boundaries.
func smallDirectBlocks(t *testing.T) {
	b, d := directBlock, directDepth
	directBlock, directDepth = 2*directAlign, 2
	t.Cleanup(func() { directBlock, directDepth = b, d })
}

// A directWriter fed in pieces of every size writes exactly those bytes,
// padding and truncating the tail, whatever the total length relative to
// the alignment and the block; with O_DIRECT cleared midway (the fallback
// for a file system that refuses a direct write) as well.
func TestDirectWriterWritesExactBytes(t *testing.T) {
	smallDirectBlocks(t)
	rng := rand.New(rand.NewPCG(41, 42))
	for _, size := range []int{0, 1, 15, directAlign - 1, directAlign, directAlign + 1, 2*directAlign + 7, 5*directAlign + 100, 64 << 10} {
		for _, fallback := range []bool{false, true} {
			want := make([]byte, size)
			for i := range want {
				want[i] = byte(rng.Uint32())
			}
			path := filepath.Join(t.TempDir(), "f")
			f, direct, err := openDirect(path)
			if err != nil {
				t.Fatal(err)
			}
			if !direct {
				f.Close()
				t.Skipf("%s does not take O_DIRECT", filepath.Dir(path))
			}
			w := newDirectWriter(f)
			for p := want; len(p) > 0; {
				n := min(len(p), 1+rng.IntN(3*directAlign))
				if fallback && len(p) <= size/2 && !w.buffered {
					if err := clearDirect(f); err != nil {
						t.Fatal(err)
					}
					w.buffered = true
				}
				if _, err := w.Write(p[:n]); err != nil {
					t.Fatal(err)
				}
				p = p[n:]
			}
			if err := w.finish(); err != nil {
				t.Fatalf("size %d: finish: %v", size, err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("size %d (fallback %v): read back %d bytes that differ from the %d written", size, fallback, len(got), len(want))
			}
		}
	}
}

// Shards written with direct I/O and through the page cache hold the same
// bytes (AlwaysCompress: without it a stall may store a chunk raw in one
// write and coded in the other).
func TestDirectAndBufferedShardsAreIdentical(t *testing.T) {
	smallDirectBlocks(t)
	rng := rand.New(rand.NewPCG(43, 44))
	a, b := noiseTensor(rng, "optim.m.w", 50_001), patternTensor("model.b", 30_000)
	var files [2][]byte
	for i, buffered := range []bool{false, true} {
		s := newTestStore(t, 0)
		opts := WriterOptions{ChunkBytes: 16 << 10, Workers: 2, DirectIO: !buffered, AlwaysCompress: true}
		info := closedShard(t, s, 1, 0, opts, func(w *ShardWriter) error {
			if err := wholeTensors(a, b)(w); err != nil {
				return err
			}
			return w.WriteBlob(BlobOptimizer, []byte(`{"step":1}`))
		})
		var err error
		if files[i], err = os.ReadFile(filepath.Join(s.TempDir(1), ShardName(0))); err != nil {
			t.Fatal(err)
		}
		if int64(len(files[i])) != info.Size {
			t.Fatalf("buffered=%v: file of %d bytes, info says %d", buffered, len(files[i]), info.Size)
		}
		commitAndCheck(t, s, info, a, b)
	}
	if !bytes.Equal(files[0], files[1]) {
		t.Fatal("direct and buffered shards differ")
	}
}

// Raw chunks read in place come out the same with direct reads and through
// the page cache, and a flipped byte is reported naming the tensor either
// way.
func TestReadInPlaceDirectAndBuffered(t *testing.T) {
	rng := rand.New(rand.NewPCG(45, 46))
	a := noiseTensor(rng, "optim.m.w", 70_001) // chunks at unaligned offsets, a short last chunk
	s := newTestStore(t, 0)
	closedShard(t, s, 1, 0, WriterOptions{Codec: CodecNone, ChunkBytes: 64 << 10}, wholeTensors(a))
	path := filepath.Join(s.TempDir(1), ShardName(0))
	read := func(direct bool) ([]float32, error) {
		r, err := OpenShard(path)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if !direct && r.direct != nil {
			r.direct.Close()
			r.direct = nil
		}
		if direct && r.direct == nil {
			t.Skipf("%s does not take O_DIRECT", filepath.Dir(path))
		}
		dst := make([]float32, len(a.data))
		n, err := r.readInto(a.name, a.shape, Whole(a.shape), dst)
		if err == nil && n != int64(len(dst)) {
			t.Fatalf("direct=%v: %d of %d elements", direct, n, len(dst))
		}
		return dst, err
	}
	for _, direct := range []bool{true, false} {
		got, err := read(direct)
		if err != nil {
			t.Fatalf("direct=%v: %v", direct, err)
		}
		if !slices.Equal(got, a.data) {
			t.Fatalf("direct=%v: values differ from those written", direct)
		}
	}
	r, err := OpenShard(path)
	if err != nil {
		t.Fatal(err)
	}
	off := r.byName[a.name].Chunks[2].Off + 100
	r.Close()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := []byte{0}
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, direct := range []bool{true, false} {
		_, err := read(direct)
		if err == nil || !strings.Contains(err.Error(), a.name) || !strings.Contains(err.Error(), "chunk 2") || !strings.Contains(err.Error(), "checksum mismatch") {
			t.Fatalf("direct=%v: corrupt chunk read gave %v", direct, err)
		}
	}
}
