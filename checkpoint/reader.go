package checkpoint

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"runtime"
	"slices"
	"sync"

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
	if s.closer != nil {
		return s.closer.Close()
	}
	return nil
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
	if got := crc32.Checksum(stored, crcTable); got != c.SCRC {
		return nil, s.errf(e, ci, "checksum mismatch (stored bytes at offset %d: got %08x, want %08x)", c.Off, got, c.SCRC)
	}
	raw := stored
	if c.Codec != codecRaw {
		dec, err := sharedDecoder()
		if err != nil {
			return nil, fmt.Errorf("zstd decoder: %w", err)
		}
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
// many elements it copied. Only chunks that overlap are read; they are
// decoded readWindow at a time, in parallel, so memory stays bounded by
// readWindow chunks whatever the piece size.
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
	type seg struct {
		chunk    int
		off, dst int64 // element offset inside the chunk; position in dst
		n        int64
	}
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
	// Pass 2: per window of distinct chunks, decode in parallel, then copy.
	window := max(2, 2*runtime.GOMAXPROCS(0))
	var copied int64
	for i := 0; i < len(segs); {
		var chunks []int
		j := i
		for ; j < len(segs) && (len(chunks) < window || segs[j].chunk == chunks[len(chunks)-1]); j++ {
			if len(chunks) == 0 || segs[j].chunk != chunks[len(chunks)-1] {
				chunks = append(chunks, segs[j].chunk)
			}
		}
		errs := make([]error, len(chunks))
		decoded := make([][]float32, len(chunks))
		var wg sync.WaitGroup
		for k, c := range chunks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				raw, _, err := s.chunkRaw(e, c, nil)
				if err != nil {
					errs[k] = err
					return
				}
				decoded[k] = f32View(raw)
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return copied, err
		}
		// segs[i:j] visit chunks in the order of chunks, so a cursor finds
		// each seg's decoded chunk.
		for k := 0; i < j; i++ {
			sg := segs[i]
			for chunks[k] != sg.chunk {
				k++
			}
			copy(dst[sg.dst:sg.dst+sg.n], decoded[k][sg.off:sg.off+sg.n])
			copied += sg.n
		}
	}
	return copied, nil
}

// Verify reads the whole file once: the file checksum, every chunk's CRCs and
// decoding, and every entry's CRC. The error names the shard and the first
// bad tensor or blob.
func (s *ShardReader) Verify() error {
	br := bufio.NewReaderSize(io.NewSectionReader(s.r, 0, s.size), 1<<20)
	crc := uint32(0)
	hb := make([]byte, headerSize)
	if _, err := io.ReadFull(br, hb); err != nil {
		return fmt.Errorf("shard %s: read header: %w", s.name, err)
	}
	crc = crc32.Update(crc, crcTable, hb)
	var stored []byte
	for i := range s.idx.Entries {
		e := &s.idx.Entries[i]
		var sums []byte
		for ci, c := range e.Chunks {
			if int64(cap(stored)) < c.Stored {
				stored = make([]byte, c.Stored)
			}
			stored = stored[:c.Stored]
			if _, err := io.ReadFull(br, stored); err != nil {
				return s.errf(e, ci, "read: %v", err)
			}
			if _, err := s.decodeChunk(e, ci, stored); err != nil { // checks SCRC
				return err
			}
			crc = crc32.Update(crc, crcTable, binary.LittleEndian.AppendUint32(nil, c.SCRC))
			sums = binary.LittleEndian.AppendUint32(sums, c.RCRC)
		}
		if got := crc32.Checksum(sums, crcTable); got != e.CRC {
			return fmt.Errorf("shard %s: %q: entry checksum mismatch (got %08x, want %08x)", s.name, e.Name, got, e.CRC)
		}
	}
	ib := make([]byte, s.tr.indexLen)
	if _, err := io.ReadFull(br, ib); err != nil {
		return fmt.Errorf("shard %s: read index: %w", s.name, err)
	}
	crc = crc32.Update(crc, crcTable, ib)
	if crc != s.tr.fileCRC {
		return fmt.Errorf("shard %s: file checksum mismatch (got %08x, trailer says %08x)", s.name, crc, s.tr.fileCRC)
	}
	return nil
}

var errNotCovered = errors.New("region not covered by the checkpoint's pieces")
