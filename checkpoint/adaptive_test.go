package checkpoint

import (
	"context"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// When no compression worker has started a chunk by the time the file
// writer reaches it (past the pipeline's fill), the writer stores it raw
// itself (the disk does not wait for the CPU); the shard stays valid and
// reads back exactly. Here the one worker is held until the writer has taken
// every chunk after the first, so those are stored raw, deterministically.
func TestWriterStoresChunksRawWhenWorkersLag(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	big := newTestTensor(rng, "model.big", 64, 64)
	for i := range big.data {
		big.data[i] = float32(i % 7) // compressible: a worker would shrink it
	}
	first := true
	testWorkerHook = func(j *chunkJob) {
		if j.meta != nil && j.meta.Name == "model.big" && first {
			first = false
			return // the first chunk: compress it if the writer has not
		}
		select { // wait until the writer has stored it raw
		case <-j.done:
		case <-time.After(5 * time.Second): // no writer took it: compress it (the test then fails)
		}
	}
	defer func() { testWorkerHook = nil }()
	s, path, w := writeShard(t, big, WriterOptions{ChunkBytes: 1024, Workers: 1, NoSync: true})
	if err := w.WriteBlob(BlobOptimizer, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	info, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	r, err := OpenShard(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Verify(); err != nil {
		t.Fatal(err)
	}
	chunks := r.byName["model.big"].Chunks
	if len(chunks) != 16 {
		t.Fatalf("%d chunks, want 16", len(chunks))
	}
	for i, c := range chunks[1:] {
		if c.Codec != codecRaw || c.Stored != c.Raw {
			t.Fatalf("chunk %d: codec %d, %d of %d bytes: want raw", i+1, c.Codec, c.Stored, c.Raw)
		}
	}
	commitAndCheck(t, s, info, big)
}

// Once compression has kept the file writer waiting rawAfterStalls times,
// the CPU is the bottleneck: the rest of the shard is stored raw even by
// free workers, and it still reads back exactly.
func TestWriterGoesRawAfterStalls(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 24))
	big := newTestTensor(rng, "model.big", 64, 64)
	for i := range big.data {
		big.data[i] = float32(i % 7) // compressible: a worker would shrink it
	}
	// The one worker takes the chunks in order. It compresses the first
	// (the writer waits for it while the pipeline fills), then is held on
	// the next rawAfterStalls chunks until the writer has stored them raw.
	calls := 0
	testWorkerHook = func(j *chunkJob) {
		calls++
		if calls == 1 || calls > rawAfterStalls+1 {
			return
		}
		select {
		case <-j.done:
		case <-time.After(5 * time.Second):
		}
	}
	defer func() { testWorkerHook = nil }()
	s, path, w := writeShard(t, big, WriterOptions{ChunkBytes: 1024, Workers: 1, NoSync: true})
	info, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !w.rawOnly.Load() {
		t.Fatal("the writer stalled but did not switch the shard to raw")
	}
	r, err := OpenShard(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Verify(); err != nil {
		t.Fatal(err)
	}
	chunks := r.byName["model.big"].Chunks
	for i, c := range chunks[rawAfterStalls+1:] {
		if c.Codec != codecRaw {
			t.Fatalf("chunk %d after the switch: codec %d, want raw", i+rawAfterStalls+1, c.Codec)
		}
	}
	commitAndCheck(t, s, info, big)
}

// commitAndCheck publishes step 1 made of shard info, verifies every
// checksum and reads tensor back, which must equal what was written.
func commitAndCheck(t *testing.T, s *Store, info ShardInfo, tensor testTensor) {
	t.Helper()
	if err := s.Commit(NewManifest(1, []ShardInfo{info})); err != nil {
		t.Fatal(err)
	}
	c, err := OpenDir(s.StepDir(1), OpenOptions{Verify: VerifyFull})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, _, err := c.ReadTensor(tensor.name)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, tensor.data) {
		t.Fatalf("%s read back differs", tensor.name)
	}
}

// The writer always reaches a shard's first chunks before they are
// compressed (the pipeline is filling); that is not compression falling
// behind the disk, so they are compressed and the shard does not go raw.
// (Before this rule every shard went raw at its first chunk.)
func TestWriterCompressesWithFreeWorkers(t *testing.T) {
	rng := rand.New(rand.NewPCG(25, 26))
	big := newTestTensor(rng, "model.big", 64, 64)
	for i := range big.data {
		big.data[i] = float32(i % 7)
	}
	// One chunk, within the fill of two workers.
	s, path, w := writeShard(t, big, WriterOptions{ChunkBytes: 64 << 10, Workers: 2, NoSync: true})
	info, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	if w.rawOnly.Load() {
		t.Fatal("the shard went raw although a worker was always free")
	}
	r, err := OpenShard(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	chunks := r.byName["model.big"].Chunks
	if len(chunks) != 1 {
		t.Fatalf("%d chunks, want 1", len(chunks))
	}
	if c := chunks[0]; c.Codec == codecRaw || c.Stored >= c.Raw {
		t.Fatalf("chunk stored with codec %d, %d of %d bytes: want it compressed", c.Codec, c.Stored, c.Raw)
	}
	commitAndCheck(t, s, info, big)
}

// High-entropy data shrinks by a few percent at most: once
// the pipeline's fill shows it saves less than minSaving, the rest of the
// shard is stored raw. Low-entropy data keeps being compressed past the fill.
func TestWriterGoesRawOnIncompressibleData(t *testing.T) {
	for _, c := range []struct {
		name           string
		compressible   bool
		wantIncompress bool
	}{{"weights", false, true}, {"pattern", true, false}} {
		t.Run(c.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(27, 28))
			big := newTestTensor(rng, "model.big", 64, 64)
			for i := range big.data {
				// 31 random bits per value (bit 30 clear: finite), like the
				// high-entropy mantissas of trained weights and moments.
				big.data[i] = math.Float32frombits(rng.Uint32() &^ (1 << 30))
			}
			if c.compressible {
				for i := range big.data {
					big.data[i] = float32(i % 7)
				}
			}
			s, path, w := writeShard(t, big, WriterOptions{ChunkBytes: 1024, Workers: 2, NoSync: true})
			info, err := w.Close()
			if err != nil {
				t.Fatal(err)
			}
			if got := w.rawWhy == "incompressible"; got != c.wantIncompress {
				t.Fatalf("raw because %q; want incompressible: %v", w.rawWhy, c.wantIncompress)
			}
			r, err := OpenShard(path)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			chunks := r.byName["model.big"].Chunks
			for i, ch := range chunks {
				if c.wantIncompress && i >= 2 && ch.Codec != codecRaw {
					t.Fatalf("chunk %d after the fill: codec %d, want raw", i, ch.Codec)
				}
				if !c.wantIncompress && i < 2 && ch.Codec == codecRaw {
					t.Fatalf("fill chunk %d of a compressible shard stored raw", i)
				}
			}
			commitAndCheck(t, s, info, big)
		})
	}
}

// writeShard writes tensor as the only entry of rank 0's shard of step 1 in
// a fresh store, without closing the writer.
func writeShard(t *testing.T, tensor testTensor, opts WriterOptions) (*Store, string, *ShardWriter) {
	t.Helper()
	s := newTestStore(t, 0)
	path := filepath.Join(s.TempDir(1), ShardName(0))
	w, err := s.CreateShard(context.Background(), 1, 0, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteTensor(tensor.name, tensor.shape, Whole(tensor.shape), tensor.data); err != nil {
		t.Fatal(err)
	}
	return s, path, w
}
