package checkpoint

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// When no compression worker has started a chunk by the time the file
// writer reaches it, the writer stores it raw itself (the disk does not wait
// for the CPU); the shard stays valid and reads back exactly. Here the one
// worker is held until the writer has taken every chunk after the first, so
// those are stored raw, deterministically (the first may go either way: the
// writer can reach it before the worker does).
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
	s := newTestStore(t, 0)
	path := filepath.Join(s.TempDir(1), ShardName(0))
	w, err := s.CreateShard(context.Background(), 1, 0, WriterOptions{ChunkBytes: 1024, Workers: 1, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteTensor(big.name, big.shape, Whole(big.shape), big.data); err != nil {
		t.Fatal(err)
	}
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
	held := 0
	testWorkerHook = func(j *chunkJob) {
		if j.meta == nil || j.meta.Name != "model.big" || held >= rawAfterStalls+1 {
			return // later chunks: the worker is free
		}
		held++
		select { // hold the worker until the writer has stored the chunk raw
		case <-j.done:
		case <-time.After(5 * time.Second):
		}
	}
	defer func() { testWorkerHook = nil }()
	s := newTestStore(t, 0)
	path := filepath.Join(s.TempDir(1), ShardName(0))
	w, err := s.CreateShard(context.Background(), 1, 0, WriterOptions{ChunkBytes: 1024, Workers: 1, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteTensor(big.name, big.shape, Whole(big.shape), big.data); err != nil {
		t.Fatal(err)
	}
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
