package checkpoint

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Codec selects how chunks are stored.
type Codec int

const (
	// CodecAuto (the default) compresses where it pays: float32 tensors
	// through the byte-plane codec (planes.go: Huffman-coded planes, noise
	// planes raw), blobs and float32 with NoShuffle as one zstd frame per
	// chunk. An entry whose sample does
	// not shrink enough or codes too slowly for the disk (probe.go), a chunk
	// that does not shrink, and the rest of a shard once compression falls
	// behind the disk are stored raw (see
	// AlwaysCompress; docs/checkpoint-format.md#codecs-as-implemented).
	CodecAuto Codec = iota
	// CodecNone stores raw bytes.
	CodecNone
)

// WriterOptions configure a ShardWriter. The zero value is a sensible default.
type WriterOptions struct {
	// Codec of the chunks; default CodecAuto.
	Codec Codec
	// ZstdLevel is a zstd level 1..22 mapped onto the encoder's speed
	// settings, for the chunks coded as zstd frames (blobs, NoShuffle); 0
	// means 1 (fastest), because a checkpoint competes with training for CPU
	// and most of float32 entropy is in the mantissa anyway.
	ZstdLevel int
	// NoShuffle disables the float32 byte-plane codec and codes float32
	// chunks as zstd frames instead, which do not shrink trained float32
	// state (docs/decisions.md#float32-byte-planes-with-huffman-coding).
	NoShuffle bool
	// ChunkBytes is the raw size of one chunk; default 4 MiB, rounded down to
	// a multiple of 4 and capped at MaxChunkSize. Chunks are the unit of
	// parallel compression, of checksumming and of partial reads.
	ChunkBytes int
	// Workers compress chunks concurrently; default GOMAXPROCS.
	Workers int
	// InFlight bounds chunks submitted but not yet on disk (memory is about
	// InFlight·ChunkBytes); default 2·Workers+2.
	InFlight int
	// NoSync skips fsync (tests of logic only: a checkpoint written without
	// it is not crash-safe).
	NoSync bool
	// DirectIO writes with O_DIRECT where the file system takes it
	// (direct.go) instead of through the page cache with early writeback
	// (writeback.go), the default
	// (docs/decisions.md#checkpoint-io-at-disk-bandwidth).
	DirectIO bool
	// AlwaysCompress compresses every chunk. By default an entry whose
	// sample saves less than minSaving, or codes too slowly, is stored raw
	// (entryCompressible), and a chunk that no worker has started when the
	// file writer reaches it is stored raw by the writer itself: the disk
	// never waits for the CPU, so a save on a busy machine still writes at
	// about disk speed (with less compression) and takes less CPU from
	// training.
	AlwaysCompress bool
	// BeforeClose, if set, is called by Snapshot.WriteShard with the shard's
	// path once every tensor and blob is queued and before Close finishes
	// the file: a test hook that holds a process in the middle of a shard
	// write (its ".part" file exists, the shard does not) to crash it there.
	BeforeClose func(path string)
}

func (o WriterOptions) withDefaults() WriterOptions {
	if o.ZstdLevel <= 0 {
		o.ZstdLevel = 1
	}
	if o.ChunkBytes <= 0 {
		o.ChunkBytes = 4 << 20
	}
	o.ChunkBytes = min(o.ChunkBytes, MaxChunkSize) &^ 3
	if o.ChunkBytes < 4 {
		o.ChunkBytes = 4
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	if o.InFlight <= 0 {
		o.InFlight = 2*o.Workers + 2
	}
	return o
}

// PieceInfo describes one stored tensor piece, as recorded in the manifest.
type PieceInfo struct {
	Name   string  `json:"name"`
	Shape  []int64 `json:"shape"`
	Region Region  `json:"region"`
	CRC    uint32  `json:"crc"`
}

// ShardInfo is what a rank reports after writing its shard; the committer
// collects one per rank into the Manifest.
type ShardInfo struct {
	File   string      `json:"file"` // base name inside the step directory
	Rank   int         `json:"rank"`
	Size   int64       `json:"size"`
	CRC    uint32      `json:"crc"` // the file checksum (format.go)
	Pieces []PieceInfo `json:"pieces"`
	Blobs  []string    `json:"blobs,omitempty"`
}

type chunkJob struct {
	// taken is set (0 → 1) by whoever processes the job: a compression
	// worker, or the file writer storing it raw; that one closes done.
	taken   atomic.Int32
	meta    *indexEntry // set on the first job of an entry
	raw     []byte
	last    bool // last job of its entry
	shuffle bool
	codec   Codec
	done    chan struct{}
	out     []byte
	pooled  *[]byte
	chunk   chunkEntry
	err     error
}

// ShardWriter streams one rank's tensors and blobs into a shard file. It is
// not safe for concurrent use. Data passed to WriteTensor/WriteBlob is read
// until Close returns and must not change before then (the AsyncWriter hands
// it private snapshot copies).
type ShardWriter struct {
	ctx   context.Context
	path  string
	part  string
	rank  int
	opts  WriterOptions
	f     *os.File
	sink  shardSink
	enc   *zstd.Encoder
	queue chan *chunkJob
	work  chan *chunkJob
	pool  sync.Pool
	wg    sync.WaitGroup
	res   chan writerResult
	names map[string]bool
	err   error
	done  bool
	// rawOnly is set by the file writer once compression has kept it
	// waiting rawAfterStalls times: the CPU, not the disk, is the
	// bottleneck, so the rest of the shard is stored raw (workers still
	// checksum). AlwaysCompress turns it off.
	rawOnly atomic.Bool
	start   time.Time // CreateShard: the write rate of a raw shard counts from here
}

// minSaving is the share of an entry's bytes that compression must save,
// judged on a sample (entryCompressible), for the entry to be compressed.
// Trained float32 weights and Adam moments often shrink by only a few
// percent (shuffle + Huffman), which costs far more CPU time than it saves
// disk time; zeros or low-entropy tensors shrink far more than 10%.
const minSaving = 0.10

// rawAfterStalls is how many chunks the file writer finds not yet compressed
// when it reaches them (compression behind the disk) before the rest of a
// shard goes raw. The first Workers chunks of a shard do not count: the
// writer always reaches them before the pipeline has filled.
const rawAfterStalls = 1

type writerResult struct {
	entries []*indexEntry
	off     int64
	crc     uint32
	coded   int // chunks stored with a codec
	sink    shardSink
	err     error
}

// shardSink is where the file writer's bytes go: a directWriter (direct.go)
// or a fileWriter (writeback.go).
type shardSink interface {
	io.Writer
	// finish writes what is buffered, waits for every write in flight and
	// ends background work, returning the first write error. It is called
	// exactly once, after an error too, and before the file is closed.
	finish() error
}

// CreateShard starts writing the shard of rank at path (written as path+".part"
// and renamed on Close). ctx cancels the write: later calls fail and Close
// removes the partial file.
func CreateShard(ctx context.Context, path string, rank int, opts WriterOptions) (*ShardWriter, error) {
	if rank < 0 {
		return nil, fmt.Errorf("create shard %s: rank %d is negative", path, rank)
	}
	opts = opts.withDefaults()
	w := &ShardWriter{ctx: ctx, path: path, part: path + ".part", rank: rank, opts: opts, names: map[string]bool{}, start: time.Now()}
	if opts.Codec == CodecAuto {
		enc, err := zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(opts.ZstdLevel)),
			zstd.WithEncoderConcurrency(opts.Workers),
			zstd.WithEncoderCRC(false), // chunks carry CRC-32C already
			zstd.WithZeroFrames(true))
		if err != nil {
			return nil, fmt.Errorf("create shard %s: zstd: %w", path, err)
		}
		w.enc = enc
	} else if opts.Codec != CodecNone {
		return nil, fmt.Errorf("create shard %s: unknown codec %d", path, opts.Codec)
	}
	var f *os.File
	var direct bool
	var err error
	if opts.DirectIO {
		f, direct, err = openDirect(w.part)
	} else {
		f, err = os.OpenFile(w.part, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	}
	if err != nil {
		if w.enc != nil {
			_ = w.enc.Close()
		}
		return nil, fmt.Errorf("create shard: %w", err)
	}
	w.f = f
	if direct {
		w.sink = newDirectWriter(f)
	} else {
		w.sink = newFileWriter(f, !opts.NoSync)
	}
	w.queue = make(chan *chunkJob, opts.InFlight)
	w.work = make(chan *chunkJob)
	w.res = make(chan writerResult, 1)
	bufSize := opts.ChunkBytes + opts.ChunkBytes/8 + 1024
	w.pool.New = func() any { b := make([]byte, 0, bufSize); return &b }
	for i := 0; i < opts.Workers; i++ {
		w.wg.Add(1)
		go w.compressLoop()
	}
	go w.writeLoop()
	return w, nil
}

// WriteTensor adds the piece region of the tensor name (global shape) holding
// data in row-major order of the region (len(data) == region.Len()).
func (w *ShardWriter) WriteTensor(name string, shape []int64, region Region, data []float32) error {
	if err := w.check(name); err != nil {
		return err
	}
	if err := region.Validate(shape); err != nil {
		return w.fail(fmt.Errorf("tensor %q: region %v of shape %v: %w", name, region, shape, err))
	}
	if int64(len(data)) != region.Len() {
		return w.fail(fmt.Errorf("tensor %q: %d values for region %v of %d elements", name, len(data), region, region.Len()))
	}
	meta := &indexEntry{Name: name, Kind: kindF32, Shape: append([]int64(nil), shape...), Region: cloneRegion(region),
		Shuffle: !w.opts.NoShuffle && w.opts.Codec == CodecAuto}
	return w.submit(meta, f32Bytes(data), meta.Shuffle)
}

// WriteBlob adds opaque bytes (RNG state, sampler state, optimizer step...).
func (w *ShardWriter) WriteBlob(name string, data []byte) error {
	if err := w.check(name); err != nil {
		return err
	}
	if len(data) > MaxBlobSize {
		return w.fail(fmt.Errorf("blob %q: %d bytes exceed %d", name, len(data), MaxBlobSize))
	}
	return w.submit(&indexEntry{Name: name, Kind: kindBlob}, data, false)
}

func (w *ShardWriter) check(name string) error {
	if w.done {
		return fmt.Errorf("shard %s: write after Close", w.path)
	}
	if w.err != nil {
		return w.err
	}
	if name == "" {
		return w.fail(errors.New("empty name"))
	}
	if w.names[name] {
		return w.fail(fmt.Errorf("duplicate name %q", name))
	}
	w.names[name] = true
	return nil
}

func (w *ShardWriter) fail(err error) error {
	if w.err == nil {
		w.err = fmt.Errorf("shard %s: %w", w.path, err)
	}
	return w.err
}

func (w *ShardWriter) submit(meta *indexEntry, raw []byte, shuffle bool) error {
	cb := w.opts.ChunkBytes
	// The entry's codec is decided once, before its first chunk is queued,
	// so every chunk of an entry gets the same decision whichever worker
	// takes it, and one entry's data never decides for another's.
	codec := w.opts.Codec
	if codec == CodecAuto && !w.opts.AlwaysCompress && !w.entryCompressible(raw, shuffle) {
		codec = CodecNone
	}
	first := true
	for first || len(raw) > 0 {
		if err := w.ctx.Err(); err != nil {
			return w.fail(err)
		}
		n := min(cb, len(raw))
		j := &chunkJob{raw: raw[:n:n], shuffle: shuffle, codec: codec, done: make(chan struct{})}
		if first {
			j.meta = meta
			first = false
		}
		raw = raw[n:]
		j.last = len(raw) == 0
		select {
		case w.queue <- j:
		case <-w.ctx.Done():
			return w.fail(w.ctx.Err())
		}
		if n == 0 {
			if j.taken.CompareAndSwap(0, 1) { // else the writer took it
				close(j.done) // an empty entry: nothing to compress
			}
			continue
		}
		select {
		case w.work <- j:
		case <-w.ctx.Done():
			if j.taken.CompareAndSwap(0, 1) { // not stored raw by the writer meanwhile
				j.err = w.ctx.Err() // queued but never compressed: release the writer
				close(j.done)
			}
			return w.fail(w.ctx.Err())
		}
	}
	return nil
}

// testWorkerHook, set by tests before CreateShard, runs in a compression
// worker before it takes a job.
var testWorkerHook func(*chunkJob)

func (w *ShardWriter) compressLoop() {
	defer w.wg.Done()
	for j := range w.work {
		if testWorkerHook != nil {
			testWorkerHook(j)
		}
		if j.taken.CompareAndSwap(0, 1) {
			w.compress(j, w.rawOnly.Load())
			close(j.done)
		}
	}
}

// compress checksums j's chunk and, unless raw, compresses it with its codec.
func (w *ShardWriter) compress(j *chunkJob, raw bool) {
	j.chunk.Raw = int64(len(j.raw))
	j.chunk.RCRC = crc32.Checksum(j.raw, crcTable)
	if j.codec == CodecAuto && !raw {
		out := w.pool.Get().(*[]byte)
		var ok bool
		var codec uint8
		if j.shuffle {
			tmp := w.pool.Get().(*[]byte)
			*out, ok = encodePlanes((*out)[:0], (*tmp)[:len(j.raw)], j.raw)
			w.pool.Put(tmp)
			codec = codecPlanes
		} else {
			*out = w.enc.EncodeAll(j.raw, (*out)[:0])
			ok = len(*out) < len(j.raw)
			codec = codecZstd
		}
		if ok {
			j.out, j.pooled, j.chunk.Codec = *out, out, codec
		} else {
			w.pool.Put(out)
		}
	}
	if j.pooled == nil {
		j.out, j.chunk.Codec = j.raw, codecRaw
	}
	j.chunk.Stored = int64(len(j.out))
	if j.chunk.Codec == codecRaw {
		j.chunk.SCRC = j.chunk.RCRC // same bytes: one pass is enough
	} else {
		j.chunk.SCRC = crc32.Checksum(j.out, crcTable)
	}
}

// writeLoop appends finished chunks to the file in submission order; it owns
// the index and the running file checksum (see fileChecksum in format.go).
func (w *ShardWriter) writeLoop() {
	r := writerResult{sink: w.sink}
	write := func(b []byte) {
		if r.err != nil {
			return
		}
		if _, err := r.sink.Write(b); err != nil {
			r.err = err
			return
		}
		r.off += int64(len(b))
	}
	hdr := encodeHeader()
	write(hdr)
	r.crc = crc32.Checksum(hdr, crcTable)
	var word [4]byte
	var cur *indexEntry
	var sums []byte
	stalls, seen := 0, 0
	for j := range w.queue {
		filling := seen < w.opts.Workers
		if len(j.raw) > 0 {
			seen++
		}
		select {
		case <-j.done:
		default:
			// The chunk is not ready. Past the pipeline's fill, compression
			// is behind the disk: count the stall, then store the chunk raw
			// now if no worker has started it. rawOnly is set before done
			// is closed, so a worker that waited for this chunk sees it.
			if !w.opts.AlwaysCompress && !filling {
				if stalls++; stalls >= rawAfterStalls {
					w.rawOnly.Store(true)
				}
				if j.taken.CompareAndSwap(0, 1) {
					w.compress(j, true)
					close(j.done)
				}
			}
			<-j.done
		}
		if j.err != nil && r.err == nil {
			r.err = j.err
		}
		if j.meta != nil {
			cur = j.meta
			sums = sums[:0]
			r.entries = append(r.entries, cur)
		}
		if len(j.raw) > 0 && j.err == nil {
			j.chunk.Off = r.off
			write(j.out)
			binary.LittleEndian.PutUint32(word[:], j.chunk.SCRC)
			r.crc = crc32.Update(r.crc, crcTable, word[:])
			cur.Chunks = append(cur.Chunks, j.chunk)
			if j.chunk.Codec != codecRaw {
				r.coded++
			}
			sums = binary.LittleEndian.AppendUint32(sums, j.chunk.RCRC)
		}
		if j.last {
			cur.CRC = crc32.Checksum(sums, crcTable)
		}
		if j.pooled != nil {
			w.pool.Put(j.pooled)
		}
	}
	w.res <- r
}

// Close finishes the shard: waits for every chunk, appends the index and
// trailer, fsyncs, renames the file into place and fsyncs its directory. On
// any error (including an earlier one or a cancelled context) the partial
// file is removed and the error returned.
func (w *ShardWriter) Close() (ShardInfo, error) {
	if w.done {
		return ShardInfo{}, fmt.Errorf("shard %s: Close called twice", w.path)
	}
	w.done = true
	close(w.queue)
	close(w.work)
	w.wg.Wait()
	r := <-w.res
	if w.enc != nil {
		_ = w.enc.Close()
	}
	info, err := w.finish(r)
	if err != nil {
		_ = w.f.Close()
		_ = os.Remove(w.part)
		return ShardInfo{}, err
	}
	return info, nil
}

// Abort stops the write and removes the partial file.
func (w *ShardWriter) Abort() {
	if w.done {
		return
	}
	w.fail(errors.New("aborted"))
	_, _ = w.Close()
}

// finish completes the file: index and trailer, the sink's last writes,
// fsync, close, rename, fsync of the directory.
func (w *ShardWriter) finish(r writerResult) (ShardInfo, error) {
	info, err := w.finishIndex(r)
	if ferr := r.sink.finish(); err == nil && ferr != nil {
		err = w.fail(fmt.Errorf("write: %w", ferr))
	}
	if err != nil {
		return ShardInfo{}, err
	}
	if !w.opts.NoSync {
		if err := w.f.Sync(); err != nil {
			return ShardInfo{}, w.fail(fmt.Errorf("fsync: %w", err))
		}
	}
	if err := w.f.Close(); err != nil {
		return ShardInfo{}, w.fail(fmt.Errorf("close: %w", err))
	}
	if err := os.Rename(w.part, w.path); err != nil {
		return ShardInfo{}, w.fail(fmt.Errorf("rename: %w", err))
	}
	if !w.opts.NoSync {
		if err := syncDir(filepath.Dir(w.path)); err != nil {
			return ShardInfo{}, w.fail(err)
		}
		if r.coded == 0 {
			noteShardRate(info.Size, time.Since(w.start))
		}
	}
	return info, nil
}

// finishIndex appends the index and trailer to the sink (not yet finished)
// and returns the shard's info.
func (w *ShardWriter) finishIndex(r writerResult) (ShardInfo, error) {
	if w.err != nil {
		return ShardInfo{}, w.err
	}
	if err := w.ctx.Err(); err != nil {
		return ShardInfo{}, w.fail(err)
	}
	if r.err != nil {
		return ShardInfo{}, w.fail(fmt.Errorf("write: %w", r.err))
	}
	idx := shardIndex{Version: formatVersion, Rank: w.rank, Entries: make([]indexEntry, len(r.entries))}
	info := ShardInfo{File: filepath.Base(w.path), Rank: w.rank}
	for i, e := range r.entries {
		idx.Entries[i] = *e
		if e.Kind == kindF32 {
			info.Pieces = append(info.Pieces, PieceInfo{Name: e.Name, Shape: e.Shape, Region: e.Region, CRC: e.CRC})
		} else {
			info.Blobs = append(info.Blobs, e.Name)
		}
	}
	ib, err := json.Marshal(&idx)
	if err != nil {
		return ShardInfo{}, w.fail(fmt.Errorf("index: %w", err))
	}
	indexOff := r.off
	if _, err := r.sink.Write(ib); err != nil {
		return ShardInfo{}, w.fail(fmt.Errorf("write index: %w", err))
	}
	fileCRC := crc32.Update(r.crc, crcTable, ib)
	tr := encodeTrailer(indexOff, int64(len(ib)), crc32.Checksum(ib, crcTable), fileCRC)
	if _, err := r.sink.Write(tr); err != nil {
		return ShardInfo{}, w.fail(fmt.Errorf("write trailer: %w", err))
	}
	info.Size = indexOff + int64(len(ib)) + trailerSize
	info.CRC = fileCRC
	return info, nil
}

func cloneRegion(r Region) Region {
	r.Start = append([]int64(nil), r.Start...)
	r.Count = append([]int64(nil), r.Count...)
	if len(r.Start) == 0 {
		r.Start = nil
	}
	if len(r.Count) == 0 {
		r.Count = nil
	}
	return r
}

// syncDir fsyncs a directory so entries created or renamed in it are durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}
