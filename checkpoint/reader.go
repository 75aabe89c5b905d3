package checkpoint

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
)

var (
	decoderOnce sync.Once
	decoder     *zstd.Decoder
	decoderErr  error
)

// sharedDecoder is safe for concurrent DecodeAll calls; its limit stops a
// forged frame from decoding to more than MaxChunkSize bytes.
func sharedDecoder() (*zstd.Decoder, error) {
	decoderOnce.Do(func() {
		decoder, decoderErr = zstd.NewReader(nil, zstd.WithDecoderMaxMemory(MaxChunkSize))
	})
	return decoder, decoderErr
}

// ShardReader reads one shard file. Its methods are safe for concurrent use.
type ShardReader struct {
	name   string // for errors: the file path
	r      io.ReaderAt
	closer io.Closer
	size   int64
	tr     trailer
	idx    *shardIndex
	byName map[string]*indexEntry
	// direct is the file opened again with O_DIRECT (nil where the file
	// system refuses it), for readSegsDirect.
	direct *os.File
}

// OpenShard opens path and checks its header, trailer and index (not the
// chunk data: see Verify, and every read checks the chunks it touches).
func OpenShard(path string) (*ShardReader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open shard: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open shard %s: %w", path, err)
	}
	s, err := newShardReader(f, st.Size(), path)
	if err != nil {
		f.Close()
		return nil, err
	}
	s.closer = f
	s.direct = openReadDirect(path)
	return s, nil
}

// newShardReader decodes the header, trailer and index of a shard of size
// bytes readable through r; name labels errors.
func newShardReader(r io.ReaderAt, size int64, name string) (*ShardReader, error) {
	fail := func(err error) (*ShardReader, error) { return nil, fmt.Errorf("shard %s: %w", name, err) }
	if size < headerSize+trailerSize {
		return fail(fmt.Errorf("truncated: %d bytes is shorter than header and trailer", size))
	}
	hb := make([]byte, headerSize)
	if _, err := r.ReadAt(hb, 0); err != nil {
		return fail(fmt.Errorf("read header: %w", err))
	}
	if err := checkHeader(hb); err != nil {
		return fail(err)
	}
	tb := make([]byte, trailerSize)
	if _, err := r.ReadAt(tb, size-trailerSize); err != nil {
		return fail(fmt.Errorf("read trailer: %w", err))
	}
	tr, err := decodeTrailer(tb, size)
	if err != nil {
		return fail(err)
	}
	ib := make([]byte, tr.indexLen)
	if _, err := r.ReadAt(ib, tr.indexOff); err != nil {
		return fail(fmt.Errorf("read index: %w", err))
	}
	idx, err := decodeIndex(ib, tr.indexCRC, tr.indexOff)
	if err != nil {
		return fail(err)
	}
	s := &ShardReader{name: name, r: r, size: size, tr: tr, idx: idx, byName: make(map[string]*indexEntry, len(idx.Entries))}
	for i := range idx.Entries {
		s.byName[idx.Entries[i].Name] = &idx.Entries[i]
	}
	return s, nil
}

// Close closes the file.
func (s *ShardReader) Close() error {
	var err error
	if s.direct != nil {
		err = s.direct.Close()
	}
	if s.closer != nil {
		err = errors.Join(s.closer.Close(), err)
	}
	return err
}

// Rank is the rank recorded in the shard.
func (s *ShardReader) Rank() int { return s.idx.Rank }

// Size is the file size in bytes.
func (s *ShardReader) Size() int64 { return s.size }

// CRC is the file checksum recorded in the trailer.
func (s *ShardReader) CRC() uint32 { return s.tr.fileCRC }

// Pieces lists the tensor pieces in file order.
func (s *ShardReader) Pieces() []PieceInfo {
	var out []PieceInfo
	for _, e := range s.idx.Entries {
		if e.Kind == kindF32 {
			out = append(out, PieceInfo{Name: e.Name, Shape: e.Shape, Region: e.Region, CRC: e.CRC})
		}
	}
	return out
}

// Blobs lists the blob names in file order.
func (s *ShardReader) Blobs() []string {
	var out []string
	for _, e := range s.idx.Entries {
		if e.Kind == kindBlob {
			out = append(out, e.Name)
		}
	}
	return out
}

func (s *ShardReader) errf(e *indexEntry, chunk int, format string, args ...any) error {
	what := "tensor"
	if e.Kind == kindBlob {
		what = "blob"
	}
	return fmt.Errorf("shard %s: %s %q chunk %d: %s", s.name, what, e.Name, chunk, fmt.Sprintf(format, args...))
}

// chunkRaw returns the raw (unshuffled, little-endian) bytes of chunk ci of e
// in dst (reused when large enough) after checking both its CRCs.
func (s *ShardReader) chunkRaw(e *indexEntry, ci int, stored []byte) (raw, storedBuf []byte, err error) {
	c := e.Chunks[ci]
	if int64(cap(stored)) < c.Stored {
		stored = make([]byte, c.Stored)
	}
	stored = stored[:c.Stored]
	if _, err := s.r.ReadAt(stored, c.Off); err != nil {
		return nil, stored, s.errf(e, ci, "read %d bytes at %d: %v", c.Stored, c.Off, err)
	}
	raw, err = s.decodeChunk(e, ci, stored)
	return raw, stored, err
}

func (s *ShardReader) decodeChunk(e *indexEntry, ci int, stored []byte) ([]byte, error) {
	c := e.Chunks[ci]
	got := crc32.Checksum(stored, crcTable)
	if got != c.SCRC {
		return nil, s.errf(e, ci, "checksum mismatch (stored bytes at offset %d: got %08x, want %08x)", c.Off, got, c.SCRC)
	}
	if c.Codec == codecRaw { // raw and stored bytes are the same: one pass
		if got != c.RCRC {
			return nil, s.errf(e, ci, "raw checksum mismatch (got %08x, want %08x)", got, c.RCRC)
		}
		return stored, nil
	}
	dec, err := sharedDecoder()
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	var raw []byte
	if c.Codec == codecPlanes {
		raw, err = decodePlanes(stored, c.Raw)
		if err != nil {
			return nil, s.errf(e, ci, "%v", err)
		}
	} else {
		// Preallocate what the stored size makes plausible, not what
		// the index claims: DecodeAll grows the buffer up to
		// MaxChunkSize only if the frame really decodes that far.
		raw, err = dec.DecodeAll(stored, make([]byte, 0, min(c.Raw, 64*c.Stored+4096)))
		if err != nil {
			return nil, s.errf(e, ci, "zstd: %v", err)
		}
	}
	if int64(len(raw)) != c.Raw {
		return nil, s.errf(e, ci, "decoded %d bytes, want %d", len(raw), c.Raw)
	}
	if got := crc32.Checksum(raw, crcTable); got != c.RCRC {
		return nil, s.errf(e, ci, "raw checksum mismatch (got %08x, want %08x)", got, c.RCRC)
	}
	return raw, nil
}

// ReadBlob returns the bytes of blob name.
func (s *ShardReader) ReadBlob(name string) ([]byte, error) {
	e, ok := s.byName[name]
	if !ok || e.Kind != kindBlob {
		return nil, fmt.Errorf("shard %s: no blob %q", s.name, name)
	}
	out := make([]byte, 0, e.rawSize())
	var stored []byte
	for ci := range e.Chunks {
		var raw []byte
		var err error
		raw, stored, err = s.chunkRaw(e, ci, stored)
		if err != nil {
			return nil, err
		}
		out = append(out, raw...)
	}
	return out, nil
}

// readInto copies the part of piece name that overlaps want (a region of the
// same tensor) into dst, the dense row-major buffer of want, and returns how
// many elements it copied. Only chunks that overlap are read (readSegs), so
// memory stays bounded by a few chunks whatever the piece size.
func (s *ShardReader) readInto(name string, shape []int64, want Region, dst []float32) (int64, error) {
	e, ok := s.byName[name]
	if !ok || e.Kind != kindF32 {
		return 0, fmt.Errorf("shard %s: no tensor %q", s.name, name)
	}
	if !slices.Equal(e.Shape, shape) {
		return 0, fmt.Errorf("shard %s: tensor %q has shape %v, want %v", s.name, name, e.Shape, shape)
	}
	// Pass 1: the overlaps, split at chunk boundaries. Both a (piece
	// position) and the chunk index only grow.
	var (
		segs   []seg
		err    error
		ci     = -1
		cStart int64
		cEnd   int64
	)
	intersect(shape, e.Region, want, func(o overlap) bool {
		for o.n > 0 {
			for o.a >= cEnd {
				if ci+1 >= len(e.Chunks) {
					err = fmt.Errorf("shard %s: tensor %q: chunks end before element %d", s.name, name, o.a)
					return false
				}
				ci++
				cStart = cEnd
				cEnd = cStart + e.Chunks[ci].Raw/4
			}
			k := min(o.n, cEnd-o.a)
			segs = append(segs, seg{chunk: ci, off: o.a - cStart, dst: o.b, n: k})
			o.a, o.b, o.n = o.a+k, o.b+k, o.n-k
		}
		return true
	})
	if err != nil {
		return 0, err
	}
	return s.readSegs(e, segs, dst)
}

// seg is one part of a chunk that readInto copies: n elements from element
// off of the chunk to position dst of the destination.
type seg struct {
	chunk    int
	off, dst int64
	n        int64
}

// readSegs copies the chunks segs touch (segs in chunk order) into dst and
// returns how many elements it copied: all of segs or, on an error, what it
// copied before. A raw chunk that one seg covers whole is read straight into
// dst and checked as it is read (readRaw); any other is read into a buffer,
// decoded and copied.
func (s *ShardReader) readSegs(e *indexEntry, segs []seg, dst []float32) (int64, error) {
	var jobs [][]seg
	var refs []chunkRef
	for i := 0; i < len(segs); {
		j := i + 1
		for j < len(segs) && segs[j].chunk == segs[i].chunk {
			j++
		}
		js := segs[i:j]
		ref := chunkRef{e: e, ci: js[0].chunk}
		if c := e.Chunks[ref.ci]; len(js) == 1 && c.Codec == codecRaw && hostLittleEndian && js[0].off == 0 && js[0].n*4 == c.Raw {
			ref.into = f32Bytes(dst[js[0].dst : js[0].dst+js[0].n]) // a view of dst
		}
		jobs = append(jobs, js)
		refs = append(refs, ref)
		i = j
	}
	if s.direct != nil && !slices.ContainsFunc(refs, func(r chunkRef) bool { return r.into == nil }) {
		return s.readSegsDirect(refs, jobs)
	}
	var copied atomic.Int64
	err := s.pipeChunks(refs, func(k int, stored []byte) error {
		js := jobs[k]
		if refs[k].into != nil { // checked by the pipeline as it read it
			copied.Add(js[0].n)
			return nil
		}
		raw, err := s.decodeChunk(e, js[0].chunk, stored)
		if err != nil {
			return err
		}
		vals := f32View(raw)
		for _, sg := range js {
			copy(dst[sg.dst:sg.dst+sg.n], vals[sg.off:sg.off+sg.n])
			copied.Add(sg.n)
		}
		return nil
	})
	return copied.Load(), err
}

// chunkRef names chunk ci of entry e for pipeChunks; into, if not nil, is
// where its stored bytes are read (else a buffer of the pipeline), and then
// the chunk must be raw: the pipeline checks its CRCs itself.
type chunkRef struct {
	e    *indexEntry
	ci   int
	into []byte
}

// readAhead bounds the chunks a pipeline holds that are read but not yet
// checked (its memory is about readAhead chunks).
const readAhead = 4

// readPiece is the size of the reads of a raw chunk read into the caller's
// buffer: each piece is checksummed right after its read, while it is still
// in the CPU cache, instead of being read back from memory by a checker.
const readPiece = 1 << 20

// pipeChunks reads the stored bytes of refs (in file order) and calls
// check(k, stored) for each, returning the first error in the order of
// refs. One goroutine reads the chunks in order, so the kernel sees one
// sequential stream and reads ahead (parallel reads at scattered offsets
// measured slower), while GOMAXPROCS others run check. After an error no
// further chunk is read, but every chunk read before it is checked, so the
// error returned does not depend on scheduling.
func (s *ShardReader) pipeChunks(refs []chunkRef, check func(k int, stored []byte) error) error {
	type item struct {
		k      int
		stored []byte
		pooled bool
		err    error
	}
	items := make(chan item, readAhead)
	free := make(chan []byte, readAhead)
	for range readAhead {
		free <- nil
	}
	errs := make([]error, len(refs))
	var failed atomic.Bool
	go func() {
		defer close(items)
		for k, r := range refs {
			if failed.Load() {
				return
			}
			c := r.e.Chunks[r.ci]
			it := item{k: k, stored: r.into}
			if it.stored == nil {
				buf := <-free
				if int64(cap(buf)) < c.Stored {
					buf = make([]byte, c.Stored)
				}
				it.stored, it.pooled = buf[:c.Stored], true
			}
			if r.into != nil {
				it.err = s.readRaw(r.e, r.ci, r.into)
				it.stored = nil
			} else if _, err := s.r.ReadAt(it.stored, c.Off); err != nil {
				it.err = s.errf(r.e, r.ci, "read %d bytes at %d: %v", c.Stored, c.Off, err)
			}
			items <- it
		}
	}()
	var wg sync.WaitGroup
	for range max(1, runtime.GOMAXPROCS(0)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range items {
				err := it.err
				if err == nil {
					err = check(it.k, it.stored) // stored is nil for refs read into place
				}
				if it.pooled {
					free <- it.stored
				}
				if err != nil {
					errs[it.k] = err
					failed.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// readDirectParallel is how many direct reads one readSegsDirect has in
// flight: without the kernel's read-ahead, the queue depth is the reader's.
const readDirectParallel = 4

// readBufs keeps aligned bounce buffers of direct reads for later reads.
var readBufs = make(chan []byte, 2*readDirectParallel)

// readSegsDirect reads raw chunks, each covered whole by one seg, into
// their places (refs[k].into) with O_DIRECT: readDirectParallel readers
// take the chunks in order, read each chunk's aligned span into a bounce
// buffer and copy it out, checksumming as they copy. Bypassing the page
// cache saves the memory a resume would otherwise need twice (the page
// cache and the trainer's buffers) and a copy through it; the bounce copy
// is from memory still in the CPU cache. It returns the elements copied and
// the first error in chunk order.
func (s *ShardReader) readSegsDirect(refs []chunkRef, jobs [][]seg) (int64, error) {
	var (
		next   atomic.Int64
		failed atomic.Bool
		copied atomic.Int64
		errs   = make([]error, len(refs))
		wg     sync.WaitGroup
	)
	for range min(readDirectParallel, len(refs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var bounce []byte
			select {
			case bounce = <-readBufs:
			default:
			}
			defer func() {
				select {
				case readBufs <- bounce:
				default:
				}
			}()
			for !failed.Load() {
				k := int(next.Add(1) - 1)
				if k >= len(refs) {
					return
				}
				var err error
				if bounce, err = s.readRawDirect(refs[k].e, refs[k].ci, refs[k].into, bounce); err != nil {
					errs[k] = err
					failed.Store(true)
					return
				}
				copied.Add(jobs[k][0].n)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return copied.Load(), err
		}
	}
	return copied.Load(), nil
}

// readRawDirect reads raw chunk ci of e into b through bounce (an aligned
// buffer, replaced by a larger one when too small, and returned).
func (s *ShardReader) readRawDirect(e *indexEntry, ci int, b, bounce []byte) ([]byte, error) {
	c := e.Chunks[ci]
	lo := c.Off &^ (directAlign - 1)
	hi := (c.Off + c.Stored + directAlign - 1) &^ (directAlign - 1)
	if n := int(hi - lo); cap(bounce) < n {
		bounce = alignedBuf(n)
	}
	span := bounce[:hi-lo]
	n, err := s.direct.ReadAt(span, lo)
	if int64(n) < c.Off+c.Stored-lo { // a short read at the end of the file is fine past the chunk
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return bounce, s.errf(e, ci, "read %d bytes at %d: %v", c.Stored, c.Off, err)
	}
	src := span[c.Off-lo : c.Off-lo+c.Stored]
	var crc uint32
	for off := 0; off < len(b); off += readPiece {
		end := min(off+readPiece, len(b))
		copy(b[off:end], src[off:end])
		crc = crc32.Update(crc, crcTable, b[off:end])
	}
	if crc != c.SCRC || crc != c.RCRC {
		return bounce, s.errf(e, ci, "checksum mismatch (raw bytes at offset %d: got %08x, want %08x)", c.Off, crc, c.SCRC)
	}
	return bounce, nil
}

// readRaw reads raw chunk ci of e into b (its length) in readPiece reads,
// checksumming each while it is in cache, and checks the chunk's CRCs.
func (s *ShardReader) readRaw(e *indexEntry, ci int, b []byte) error {
	c := e.Chunks[ci]
	if c.Codec != codecRaw || int64(len(b)) != c.Stored {
		return s.errf(e, ci, "internal error: read in place of a %d-byte chunk with codec %d into %d bytes", c.Stored, c.Codec, len(b))
	}
	var crc uint32
	for off := 0; off < len(b); off += readPiece {
		p := b[off:min(off+readPiece, len(b))]
		if _, err := s.r.ReadAt(p, c.Off+int64(off)); err != nil {
			return s.errf(e, ci, "read %d bytes at %d: %v", len(p), c.Off+int64(off), err)
		}
		crc = crc32.Update(crc, crcTable, p)
	}
	if crc != c.SCRC || crc != c.RCRC {
		return s.errf(e, ci, "checksum mismatch (raw bytes at offset %d: got %08x, want %08x)", c.Off, crc, c.SCRC)
	}
	return nil
}

// Verify reads the whole file once: the file checksum, every chunk's CRCs and
// decoding, and every entry's CRC. The error names the shard and the first
// bad tensor or blob. The chunks are read and checked as by ReadRegion
// (pipeChunks); the file checksum covers their stored CRCs, checked there.
func (s *ShardReader) Verify() error {
	hb := make([]byte, headerSize)
	if _, err := s.r.ReadAt(hb, 0); err != nil {
		return fmt.Errorf("shard %s: read header: %w", s.name, err)
	}
	crc := crc32.Checksum(hb, crcTable)
	var refs []chunkRef
	for i := range s.idx.Entries {
		e := &s.idx.Entries[i]
		for ci := range e.Chunks {
			refs = append(refs, chunkRef{e: e, ci: ci})
		}
	}
	if err := s.pipeChunks(refs, func(k int, stored []byte) error {
		_, err := s.decodeChunk(refs[k].e, refs[k].ci, stored) // checks both CRCs
		return err
	}); err != nil {
		return err
	}
	var word [4]byte
	for i := range s.idx.Entries {
		e := &s.idx.Entries[i]
		var sums []byte
		for _, c := range e.Chunks {
			binary.LittleEndian.PutUint32(word[:], c.SCRC)
			crc = crc32.Update(crc, crcTable, word[:])
			sums = binary.LittleEndian.AppendUint32(sums, c.RCRC)
		}
		if got := crc32.Checksum(sums, crcTable); got != e.CRC {
			return fmt.Errorf("shard %s: %q: entry checksum mismatch (got %08x, want %08x)", s.name, e.Name, got, e.CRC)
		}
	}
	ib := make([]byte, s.tr.indexLen)
	if _, err := s.r.ReadAt(ib, s.tr.indexOff); err != nil {
		return fmt.Errorf("shard %s: read index: %w", s.name, err)
	}
	crc = crc32.Update(crc, crcTable, ib)
	if crc != s.tr.fileCRC {
		return fmt.Errorf("shard %s: file checksum mismatch (got %08x, trailer says %08x)", s.name, crc, s.tr.fileCRC)
	}
	return nil
}

var errNotCovered = errors.New("region not covered by the checkpoint's pieces")
