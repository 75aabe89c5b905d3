package tokshard

import (
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Index is a parsed, validated index. It refers to the bytes it was parsed
// from (the memory map) and copies nothing of the document table.
type Index struct {
	Width, Vocab, ChunkBytes int
	Docs, Tokens             uint64
	shards                   []byte // shard table
	docs                     []byte // document table
	crcs                     []byte // chunk checksums
	firstChunk               []uint64
}

// NumShards is the number of shard files.
func (x *Index) NumShards() int { return len(x.shards) / shardEntry }

// ShardTokens is the number of tokens in shard s.
func (x *Index) ShardTokens(s int) uint64 { return le.Uint64(x.shards[s*shardEntry:]) }

// Doc returns document i's shard, token offset in the shard and length.
func (x *Index) Doc(i int) (shard int, off uint64, n int) {
	e := x.docs[i*docEntry:]
	return int(le.Uint32(e[12:])), le.Uint64(e), int(le.Uint32(e[8:]))
}

func (x *Index) chunks(s int) uint64 {
	b := x.ShardTokens(s) * uint64(x.Width)
	return (b + uint64(x.ChunkBytes) - 1) / uint64(x.ChunkBytes)
}

// ParseIndex validates an index file's bytes: sizes, checksum, header fields,
// shard table sums and that documents lie contiguously inside their shards.
// Bad input gives an error; allocation is bounded by the number of shards,
// itself bounded by the input's size.
func ParseIndex(b []byte) (*Index, error) {
	if len(b) < headerSize+trailerSize {
		return nil, fmt.Errorf("truncated: %d bytes, at least %d", len(b), headerSize+trailerSize)
	}
	if string(b[:8]) != indexMagic {
		return nil, errors.New("not a tokshard index (bad magic)")
	}
	if v := le.Uint32(b[8:]); v != Version {
		return nil, fmt.Errorf("format version %d, this build reads %d", v, Version)
	}
	tr := b[len(b)-trailerSize:]
	if string(tr[8:]) != trailerMagic {
		return nil, fmt.Errorf("truncated or damaged: no trailer at offset %d", len(b)-trailerSize)
	}
	x := &Index{
		Width: int(le.Uint32(b[12:])), Vocab: int(le.Uint32(b[16:])), ChunkBytes: int(le.Uint32(b[20:])),
		Docs: le.Uint64(b[32:]), Tokens: le.Uint64(b[40:]),
	}
	nShards, nChunks := uint64(le.Uint32(b[24:])), le.Uint64(b[48:])
	size := uint64(len(b))
	if nShards > size/shardEntry || x.Docs > size/docEntry || nChunks > size/4 {
		return nil, fmt.Errorf("counts (%d shards, %d documents, %d chunks) do not fit a %d-byte index", nShards, x.Docs, nChunks, size)
	}
	want := headerSize + nShards*shardEntry + x.Docs*docEntry + nChunks*4 + trailerSize
	if want != size {
		return nil, fmt.Errorf("size %d bytes, header implies %d (truncated or damaged)", size, want)
	}
	if got, stored := crc32.Checksum(b[:len(b)-trailerSize], castagnoli), le.Uint32(tr); got != stored {
		return nil, fmt.Errorf("checksum mismatch: stored %08x, computed %08x over bytes 0..%d", stored, got, len(b)-trailerSize)
	}
	if x.Width != WidthFor(x.Vocab) || x.Vocab < 1 {
		return nil, fmt.Errorf("token width %d for vocabulary %d, want %d", x.Width, x.Vocab, WidthFor(max(x.Vocab, 1)))
	}
	if x.ChunkBytes < 4 || x.ChunkBytes%4 != 0 || x.ChunkBytes > 1<<30 {
		return nil, fmt.Errorf("chunk size %d invalid", x.ChunkBytes)
	}
	p := uint64(headerSize)
	x.shards = b[p : p+nShards*shardEntry]
	p += nShards * shardEntry
	x.docs = b[p : p+x.Docs*docEntry]
	p += x.Docs * docEntry
	x.crcs = b[p : p+nChunks*4]
	x.firstChunk = make([]uint64, nShards+1)
	var docs, toks uint64
	for s := 0; s < int(nShards); s++ {
		t, d := x.ShardTokens(s), le.Uint64(x.shards[s*shardEntry+8:])
		if t > 1<<62 || d > x.Docs-docs {
			return nil, fmt.Errorf("shard %d: %d tokens, %d documents out of range", s, t, d)
		}
		x.firstChunk[s+1] = x.firstChunk[s] + x.chunks(s)
		if x.firstChunk[s+1] > nChunks {
			return nil, fmt.Errorf("shard %d: chunks beyond the %d in the index", s, nChunks)
		}
		// documents of shard s are entries docs..docs+d-1, contiguous from 0 to t
		var off uint64
		for i := docs; i < docs+d; i++ {
			sh, o, n := x.Doc(int(i))
			if sh != s || o != off {
				return nil, fmt.Errorf("document %d: shard %d offset %d, want shard %d offset %d", i, sh, o, s, off)
			}
			off += uint64(n)
		}
		if off != t {
			return nil, fmt.Errorf("shard %d: documents cover %d tokens, shard holds %d", s, off, t)
		}
		docs += d
		toks += t
	}
	if docs != x.Docs || toks != x.Tokens || x.firstChunk[nShards] != nChunks {
		return nil, fmt.Errorf("shard table sums (%d documents, %d tokens, %d chunks) differ from the header (%d, %d, %d)",
			docs, toks, x.firstChunk[nShards], x.Docs, x.Tokens, nChunks)
	}
	return x, nil
}

// Dataset is an opened dataset: the index and every shard memory-mapped
// read-only. Pages are read from disk only when touched.
type Dataset struct {
	Dir    string
	Index  *Index
	idxMap []byte
	maps   [][]byte
}

// Open maps dir's index and shards and validates the index and every shard's
// header and size (not the token checksums: see Verify).
func Open(dir string) (*Dataset, error) {
	if !littleEndianHost {
		return nil, errors.New("tokshard: big-endian hosts are not supported (tokens are viewed in place)")
	}
	d := &Dataset{Dir: dir}
	ipath := filepath.Join(dir, IndexFile)
	m, err := mapFile(ipath)
	if err != nil {
		return nil, err
	}
	d.idxMap = m
	if d.Index, err = ParseIndex(m); err != nil {
		d.Close()
		return nil, fmt.Errorf("tokshard: %s: %w", ipath, err)
	}
	// Validation touched every page of the index; drop them from this
	// process's resident set (they stay in the page cache and fault back in
	// on use), so a reader's memory counts only what it reads afterwards.
	_ = unix.Madvise(m, unix.MADV_DONTNEED)
	x := d.Index
	for s := 0; s < x.NumShards(); s++ {
		p := filepath.Join(dir, shardName(s))
		sm, err := mapFile(p)
		if err != nil {
			d.Close()
			return nil, err
		}
		d.maps = append(d.maps, sm)
		want := uint64(headerSize) + x.ShardTokens(s)*uint64(x.Width)
		if uint64(len(sm)) != want {
			d.Close()
			return nil, fmt.Errorf("tokshard: %s: %d bytes, index implies %d (truncated or damaged)", p, len(sm), want)
		}
		if string(sm[:8]) != shardMagic || le.Uint32(sm[8:]) != Version || int(le.Uint32(sm[12:])) != x.Width ||
			int(le.Uint32(sm[16:])) != s || le.Uint64(sm[24:]) != x.ShardTokens(s) {
			d.Close()
			return nil, fmt.Errorf("tokshard: %s: header at offset 0 does not match the index (magic, version, width, shard number or token count)", p)
		}
	}
	return d, nil
}

func mapFile(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("tokshard: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("tokshard: %w", err)
	}
	if st.Size() == 0 {
		return nil, fmt.Errorf("tokshard: %s: empty file", p)
	}
	if st.Size() != int64(int(st.Size())) {
		return nil, fmt.Errorf("tokshard: %s: too large to map", p)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("tokshard: mmap %s: %w", p, err)
	}
	return m, nil
}

// Close unmaps everything; slices returned by Doc are invalid afterwards.
func (d *Dataset) Close() error {
	var first error
	for _, m := range append(d.maps, d.idxMap) {
		if m != nil {
			if err := unix.Munmap(m); err != nil && first == nil {
				first = err
			}
		}
	}
	d.maps, d.idxMap = nil, nil
	return first
}

// DropIndexPages drops the index's pages from this process's resident set
// again (as Open does after validating), for a caller that has just read
// every document's entry and keeps what it needs; they fault back in on use.
func (d *Dataset) DropIndexPages() {
	if d.idxMap != nil {
		_ = unix.Madvise(d.idxMap, unix.MADV_DONTNEED)
	}
}

// NumDocs is the number of documents.
func (d *Dataset) NumDocs() int { return int(d.Index.Docs) }

// DocLen is document i's length in tokens, from the index alone.
func (d *Dataset) DocLen(i int) int { _, _, n := d.Index.Doc(i); return n }

// Tokens is a view of one document's tokens inside a memory map: exactly one
// of U16 and I32 is set, by the dataset's width.
type Tokens struct {
	U16 []uint16
	I32 []int32
}

// Len is the number of tokens.
func (t Tokens) Len() int { return len(t.U16) + len(t.I32) }

// At is token j.
func (t Tokens) At(j int) int32 {
	if t.U16 != nil {
		return int32(t.U16[j])
	}
	return t.I32[j]
}

// AppendInt32 appends the tokens to dst as int32 (this copies).
func (t Tokens) AppendInt32(dst []int32) []int32 {
	if t.I32 != nil {
		return append(dst, t.I32...)
	}
	for _, v := range t.U16 {
		dst = append(dst, int32(v))
	}
	return dst
}

// Doc returns document i's tokens without copying; valid until Close.
func (d *Dataset) Doc(i int) (Tokens, error) {
	if i < 0 || i >= d.NumDocs() {
		return Tokens{}, fmt.Errorf("tokshard: document %d out of range [0, %d)", i, d.NumDocs())
	}
	s, off, n := d.Index.Doc(i)
	m := d.maps[s]
	if n == 0 {
		if d.Index.Width == 2 {
			return Tokens{U16: []uint16{}}, nil
		}
		return Tokens{I32: []int32{}}, nil
	}
	p := unsafe.Pointer(&m[headerSize+off*uint64(d.Index.Width)])
	if d.Index.Width == 2 {
		return Tokens{U16: unsafe.Slice((*uint16)(p), n)}, nil
	}
	return Tokens{I32: unsafe.Slice((*int32)(p), n)}, nil
}

// Shard returns all of shard s's tokens without copying (documents of the
// shard in index order, end to end); valid until Close.
func (d *Dataset) Shard(s int) Tokens {
	n := int(d.Index.ShardTokens(s))
	if n == 0 {
		return Tokens{U16: []uint16{}}
	}
	p := unsafe.Pointer(&d.maps[s][headerSize])
	if d.Index.Width == 2 {
		return Tokens{U16: unsafe.Slice((*uint16)(p), n)}
	}
	return Tokens{I32: unsafe.Slice((*int32)(p), n)}
}

// AppendRange appends tokens [from, to) of t to dst as int32.
func (t Tokens) AppendRange(dst []int32, from, to int) []int32 {
	if t.I32 != nil {
		return append(dst, t.I32[from:to]...)
	}
	for _, v := range t.U16[from:to] {
		dst = append(dst, int32(v))
	}
	return dst
}

// Verify checks every chunk checksum of every shard; an error names the file
// and the byte offset of the first bad chunk.
func (d *Dataset) Verify() error {
	x := d.Index
	for s, m := range d.maps {
		payload := m[headerSize:]
		for c := uint64(0); c < x.chunks(s); c++ {
			lo := c * uint64(x.ChunkBytes)
			hi := min(lo+uint64(x.ChunkBytes), uint64(len(payload)))
			want := le.Uint32(x.crcs[(x.firstChunk[s]+c)*4:])
			if got := crc32.Checksum(payload[lo:hi], castagnoli); got != want {
				return fmt.Errorf("tokshard: %s: checksum mismatch in bytes %d..%d (chunk %d): stored %08x, computed %08x",
					filepath.Join(d.Dir, shardName(s)), headerSize+lo, headerSize+hi, c, want, got)
			}
		}
	}
	return nil
}
