package checkpoint

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// When no compression worker has started a chunk by the time the file
// writer reaches it (past the pipeline's fill), the writer stores it raw
// itself (the disk does not wait for the CPU); the shard stays valid and
// reads back exactly. Here the one worker is held until the writer has taken
// every chunk after the first, so those are stored raw, deterministically.
func TestWriterStoresChunksRawWhenWorkersLag(t *testing.T) {
	big := patternTensor("model.big", 64, 64) // compressible: a worker would shrink it
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
	chunks := shardChunks(t, path, "model.big")
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
	big := patternTensor("model.big", 64, 64) // compressible: a worker would shrink it
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
	chunks := shardChunks(t, path, "model.big")
	for i, c := range chunks[rawAfterStalls+1:] {
		if c.Codec != codecRaw {
			t.Fatalf("chunk %d after the switch: codec %d, want raw", i+rawAfterStalls+1, c.Codec)
		}
	}
	commitAndCheck(t, s, info, big)
}

// commitAndCheck publishes step 1 made of shard info, verifies every
// checksum and reads each tensor back, which must equal what was written.
func commitAndCheck(t *testing.T, s *Store, info ShardInfo, tensors ...testTensor) {
	t.Helper()
	if err := s.Commit(NewManifest(1, []ShardInfo{info})); err != nil {
		t.Fatal(err)
	}
	c, err := OpenDir(s.StepDir(1), OpenOptions{Verify: VerifyFull})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tensor := range tensors {
		got, _, err := c.ReadTensor(tensor.name)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, tensor.data) {
			t.Fatalf("%s read back differs", tensor.name)
		}
	}
}

// The writer always reaches a shard's first chunks before they are
// compressed (the pipeline is filling); that is not compression falling
// behind the disk, so they are compressed and the shard does not go raw.
// (Before this rule every shard went raw at its first chunk.)
func TestWriterCompressesWithFreeWorkers(t *testing.T) {
	big := patternTensor("model.big", 64, 64)
	// One chunk, within the fill of two workers.
	s, path, w := writeShard(t, big, WriterOptions{ChunkBytes: 64 << 10, Workers: 2, NoSync: true})
	info, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	if w.rawOnly.Load() {
		t.Fatal("the shard went raw although a worker was always free")
	}
	chunks := shardChunks(t, path, "model.big")
	if len(chunks) != 1 {
		t.Fatalf("%d chunks, want 1", len(chunks))
	}
	if c := chunks[0]; c.Codec == codecRaw || c.Stored >= c.Raw {
		t.Fatalf("chunk stored with codec %d, %d of %d bytes: want it compressed", c.Codec, c.Stored, c.Raw)
	}
	commitAndCheck(t, s, info, big)
}

// noiseTensor has 31 random bits per value (bit 30 clear: finite), like the
// high-entropy mantissas of trained weights and moments: its byte planes
// shrink by about 3%, below minSaving, but they do shrink, so a writer that
// compressed it would store its chunks with the plane codec.
func noiseTensor(rng *rand.Rand, name string, n int64) testTensor {
	t := testTensor{name: name, shape: []int64{n}, data: make([]float32, n)}
	for i := range t.data {
		t.data[i] = math.Float32frombits(rng.Uint32() &^ (1 << 30))
	}
	return t
}

// patternTensor is low-entropy data (i % 7 at flat index i) of the given
// shape that compresses far beyond minSaving.
func patternTensor(name string, shape ...int64) testTensor {
	n, err := NumElements(shape)
	if err != nil {
		panic(err)
	}
	t := testTensor{name: name, shape: shape, data: make([]float32, n)}
	for i := range t.data {
		t.data[i] = float32(i % 7)
	}
	return t
}

// codecRecord is what the worker hook saw: the codec each entry's first
// chunk was queued with (the per-entry decision, whether or not a stall later
// made the file writer store a chunk raw) and how many chunks were queued
// with each codec.
type codecRecord struct {
	mu     sync.Mutex
	first  map[string]Codec
	chunks map[Codec]int
}

// recordCodecs installs a worker hook filling a codecRecord.
func recordCodecs(t *testing.T) *codecRecord {
	rec := &codecRecord{first: map[string]Codec{}, chunks: map[Codec]int{}}
	testWorkerHook = func(j *chunkJob) {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if j.meta != nil {
			rec.first[j.meta.Name] = j.codec
		}
		rec.chunks[j.codec]++
	}
	t.Cleanup(func() { testWorkerHook = nil })
	return rec
}

// Each large entry is judged on a sample of its own data: an incompressible
// entry is stored raw and a compressible one compressed, whichever comes
// first in the shard. With the decision taken once per shard, from its first
// chunks, the second entry of each case would get the first one's codec.
func TestWriterDecidesCodecPerEntry(t *testing.T) {
	const n = 128 << 10 // 512 KiB per entry: above probeBytes, 8 chunks of 64 KiB
	const chunks = 4 * n / (64 << 10)
	for _, order := range []string{"noise-then-pattern", "pattern-then-noise"} {
		t.Run(order, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(27, 28))
			noise, pattern := noiseTensor(rng, "optim.m.w", n), patternTensor("model.b", n)
			first, second := noise, pattern
			if order == "pattern-then-noise" {
				first, second = pattern, noise
			}
			withDiskRate(t, 1) // any coding speed keeps up: the saving alone decides
			rec := recordCodecs(t)
			s, path, w := writeShard(t, first, WriterOptions{ChunkBytes: 64 << 10, Workers: 2, NoSync: true})
			if err := w.WriteTensor(second.name, second.shape, Whole(second.shape), second.data); err != nil {
				t.Fatal(err)
			}
			info, err := w.Close()
			if err != nil {
				t.Fatal(err)
			}
			if rec.first[noise.name] != CodecNone || rec.first[pattern.name] != CodecAuto {
				t.Fatalf("entries queued with codecs %v, want %s raw (%d) and %s compressed (%d)",
					rec.first, noise.name, CodecNone, pattern.name, CodecAuto)
			}
			if rec.chunks[CodecNone] != chunks || rec.chunks[CodecAuto] != chunks {
				t.Fatalf("chunks queued per codec %v, want %d of each", rec.chunks, chunks)
			}
			for i, c := range shardChunks(t, path, noise.name) {
				if c.Codec != codecRaw {
					t.Fatalf("%s chunk %d: codec %d, want raw", noise.name, i, c.Codec)
				}
			}
			if !w.rawOnly.Load() { // no stall made the writer store chunks raw
				for i, c := range shardChunks(t, path, pattern.name) {
					if c.Codec != codecPlanes || c.Stored >= c.Raw {
						t.Fatalf("%s chunk %d: codec %d, %d of %d bytes: want compressed", pattern.name, i, c.Codec, c.Stored, c.Raw)
					}
				}
			}
			commitAndCheck(t, s, info, noise, pattern)
		})
	}
}

// The probe applies to entries larger than its sample, and AlwaysCompress
// turns it off: in both cases incompressible data is queued for compression
// (and, with AlwaysCompress, which also disables the stall rule, stored with
// the plane codec since it shrinks a little).
func TestWriterProbeScope(t *testing.T) {
	for _, c := range []struct {
		name   string
		n      int64
		always bool
	}{{"small-entry", probeBytes / 4, false}, {"always-compress", 128 << 10, true}} {
		t.Run(c.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(29, 30))
			noise := noiseTensor(rng, "optim.v.w", c.n)
			rec := recordCodecs(t)
			s, path, w := writeShard(t, noise, WriterOptions{ChunkBytes: 64 << 10, Workers: 2, NoSync: true, AlwaysCompress: c.always})
			info, err := w.Close()
			if err != nil {
				t.Fatal(err)
			}
			if rec.chunks[CodecNone] != 0 {
				t.Fatalf("chunks queued per codec %v, want none raw", rec.chunks)
			}
			if c.always {
				for i, ch := range shardChunks(t, path, noise.name) {
					if ch.Codec != codecPlanes {
						t.Fatalf("chunk %d: codec %d, want the plane codec", i, ch.Codec)
					}
				}
			}
			commitAndCheck(t, s, info, noise)
		})
	}
}

// shardChunks opens the shard at path, verifies every checksum and returns
// the chunk records of entry name.
func shardChunks(t *testing.T, path, name string) []chunkEntry {
	t.Helper()
	r, err := OpenShard(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Verify(); err != nil {
		t.Fatal(err)
	}
	e, ok := r.byName[name]
	if !ok {
		t.Fatalf("%s: no entry %q", path, name)
	}
	return e.Chunks
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

// withDiskRate sets the write rate the probe compares coding speed with, for
// the rest of the test.
func withDiskRate(t *testing.T, rate float64) {
	old := diskRate.Load()
	diskRate.Store(math.Float64bits(rate))
	t.Cleanup(func() { diskRate.Store(old) })
}

// Compression must also keep up with the disk: against a disk faster than
// any coder, even data that shrinks far beyond minSaving is stored raw,
// while against a slow one it is compressed.
func TestWriterProbeWeighsCodingSpeed(t *testing.T) {
	const n = 128 << 10 // 512 KiB: above probeBytes
	for _, c := range []struct {
		rate float64
		want Codec
	}{{1e18, CodecNone}, {1, CodecAuto}} {
		t.Run(fmt.Sprintf("disk=%g", c.rate), func(t *testing.T) {
			withDiskRate(t, c.rate)
			pattern := patternTensor("model.b", n)
			rec := recordCodecs(t)
			s, _, w := writeShard(t, pattern, WriterOptions{ChunkBytes: 64 << 10, Workers: 2, NoSync: true})
			info, err := w.Close()
			if err != nil {
				t.Fatal(err)
			}
			if rec.first[pattern.name] != c.want {
				t.Fatalf("entry queued with codec %v, want %v", rec.first[pattern.name], c.want)
			}
			commitAndCheck(t, s, info, pattern)
		})
	}
}

// The rate estimate starts at the first large raw shard's rate, then moves
// half way towards each further one; small shards do not count.
func TestNoteShardRate(t *testing.T) {
	withDiskRate(t, 0)
	if got := diskRateEstimate(); got != defaultDiskRate {
		t.Fatalf("estimate before any shard %g, want the default %g", got, float64(defaultDiskRate))
	}
	noteShardRate(minRateSample-1, time.Millisecond)
	if got := diskRateEstimate(); got != defaultDiskRate {
		t.Fatalf("a small shard moved the estimate to %g", got)
	}
	noteShardRate(400<<20, time.Second)
	if got, want := diskRateEstimate(), float64(400<<20); got != want {
		t.Fatalf("estimate %g after one shard, want %g", got, want)
	}
	noteShardRate(200<<20, time.Second)
	if got, want := diskRateEstimate(), float64(300<<20); got != want {
		t.Fatalf("estimate %g after two shards, want %g", got, want)
	}
}
