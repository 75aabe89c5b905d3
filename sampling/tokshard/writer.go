package tokshard

import (
	"bufio"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
)

// WriterOptions configure a Writer.
type WriterOptions struct {
	Vocab       int   // token ids must lie in [0, Vocab); sets the width (WidthFor)
	ShardTokens int64 // a shard is closed at the first document end past this many tokens; 0 = DefaultShardTokens
	ChunkBytes  int   // checksum granule and write buffer in bytes; 0 = DefaultChunkBytes
}

// Writer streams documents into a dataset directory. Memory is one write
// buffer of ChunkBytes, the checksums (4 bytes per chunk) and the shard table;
// tokens and document entries go to temporary files as they come. Close
// commits: shards are fsynced and renamed, then the index, then the directory
// is fsynced; a dataset without index.idx is not a dataset.
type Writer struct {
	dir   string
	o     WriterOptions
	width int

	shard     *os.File
	shardIdx  int
	shardTok  int64 // tokens in the open shard
	shardDocs int64
	buf       []byte // pending payload bytes of the current chunk
	crcs      []uint32
	shardCrc0 int // len(crcs) when the open shard began
	shards    [][2]uint64

	docs     *os.File
	docsBuf  *bufio.Writer
	numDocs  uint64
	total    uint64
	inDoc    bool
	docStart int64
	err      error
	closed   bool
}

// Create starts a dataset in dir (created if missing). A dir that already
// holds an index is refused.
func Create(dir string, o WriterOptions) (*Writer, error) {
	if o.Vocab < 1 || int64(o.Vocab) > 1<<31 {
		return nil, fmt.Errorf("tokshard: vocab %d, want 1..2^31", o.Vocab)
	}
	if o.ShardTokens == 0 {
		o.ShardTokens = DefaultShardTokens
	}
	if o.ChunkBytes == 0 {
		o.ChunkBytes = DefaultChunkBytes
	}
	if o.ShardTokens < 1 || o.ChunkBytes < 4 || o.ChunkBytes%4 != 0 || o.ChunkBytes > 1<<30 {
		return nil, fmt.Errorf("tokshard: shard tokens %d / chunk bytes %d invalid (chunk a multiple of 4 up to 1 GiB)", o.ShardTokens, o.ChunkBytes)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("tokshard: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, IndexFile)); err == nil {
		return nil, fmt.Errorf("tokshard: %s already holds a dataset (%s)", dir, IndexFile)
	}
	w := &Writer{dir: dir, o: o, width: WidthFor(o.Vocab), buf: make([]byte, 0, o.ChunkBytes)}
	f, err := os.Create(filepath.Join(dir, ".docs.tmp"))
	if err != nil {
		return nil, fmt.Errorf("tokshard: %w", err)
	}
	w.docs, w.docsBuf = f, bufio.NewWriterSize(f, 1<<16)
	return w, nil
}

func (w *Writer) fail(err error) error {
	if w.err == nil {
		w.err = err
	}
	return w.err
}

// BeginDoc starts a document; Write appends its tokens; EndDoc ends it.
func (w *Writer) BeginDoc() error {
	if w.err != nil {
		return w.err
	}
	if w.closed || w.inDoc {
		return errors.New("tokshard: BeginDoc inside a document or after Close")
	}
	if w.shard == nil {
		if err := w.openShard(); err != nil {
			return w.fail(err)
		}
	}
	w.inDoc, w.docStart = true, w.shardTok
	return nil
}

// checkInDoc is the error of op (a method's name) when w has failed before
// or holds no open document; nil otherwise.
func (w *Writer) checkInDoc(op string) error {
	if w.err != nil {
		return w.err
	}
	if !w.inDoc {
		return errors.New("tokshard: " + op + " outside a document")
	}
	return nil
}

// Write appends tokens to the open document. It buffers at most ChunkBytes.
func (w *Writer) Write(tokens []int32) error {
	if err := w.checkInDoc("Write"); err != nil {
		return err
	}
	for _, t := range tokens {
		if t < 0 || int64(t) >= int64(w.o.Vocab) {
			return w.fail(fmt.Errorf("tokshard: token %d outside the vocabulary [0, %d)", t, w.o.Vocab))
		}
		if w.width == 2 {
			w.buf = le.AppendUint16(w.buf, uint16(t))
		} else {
			w.buf = le.AppendUint32(w.buf, uint32(t))
		}
		if len(w.buf) == cap(w.buf) {
			if err := w.flushChunk(); err != nil {
				return w.fail(err)
			}
		}
	}
	w.shardTok += int64(len(tokens))
	return nil
}

// EndDoc ends the open document and records it in the index.
func (w *Writer) EndDoc() error {
	if err := w.checkInDoc("EndDoc"); err != nil {
		return err
	}
	n := w.shardTok - w.docStart
	if n > 1<<32-1 {
		return w.fail(fmt.Errorf("tokshard: document of %d tokens, at most 2^32-1", n))
	}
	var e [docEntry]byte
	le.PutUint64(e[0:], uint64(w.docStart))
	le.PutUint32(e[8:], uint32(n))
	le.PutUint32(e[12:], uint32(w.shardIdx))
	if _, err := w.docsBuf.Write(e[:]); err != nil {
		return w.fail(fmt.Errorf("tokshard: %w", err))
	}
	w.inDoc = false
	w.numDocs++
	w.shardDocs++
	w.total += uint64(n)
	if w.shardTok >= w.o.ShardTokens {
		return w.closeShard()
	}
	return nil
}

// WriteEncoded appends tokens encoded by AppendEncoded for this writer's
// vocabulary: the bytes are copied as they are, without a second range check.
func (w *Writer) WriteEncoded(e Encoded) error {
	if err := w.checkInDoc("Write"); err != nil {
		return err
	}
	if e.vocab != w.o.Vocab {
		return w.fail(fmt.Errorf("tokshard: tokens encoded for vocabulary %d, writer has %d", e.vocab, w.o.Vocab))
	}
	b := e.b
	for len(b) > 0 {
		n := copy(w.buf[len(w.buf):cap(w.buf)], b)
		w.buf, b = w.buf[:len(w.buf)+n], b[n:]
		if len(w.buf) == cap(w.buf) {
			if err := w.flushChunk(); err != nil {
				return w.fail(err)
			}
		}
	}
	w.shardTok += int64(e.Tokens())
	return nil
}

// AbortDoc discards the open document: the dataset is as if it had never
// been begun. Whole chunks already written stay; the partial chunk the
// document began in is read back from the shard file, which is cut there.
func (w *Writer) AbortDoc() error {
	if err := w.checkInDoc("AbortDoc"); err != nil {
		return err
	}
	w.inDoc = false
	if w.shardDocs == 0 { // the shard was opened for this document: drop it
		name := w.shard.Name()
		w.shard.Close()
		w.shard = nil
		w.crcs, w.buf = w.crcs[:w.shardCrc0], w.buf[:0]
		if err := os.Remove(name); err != nil {
			return w.fail(fmt.Errorf("tokshard: %w", err))
		}
		return nil
	}
	cb := int64(w.o.ChunkBytes)
	pos := w.docStart * int64(w.width)                       // payload offset of the document
	written := w.shardTok*int64(w.width) - int64(len(w.buf)) // payload bytes in the file (whole chunks)
	if pos >= written {
		w.buf = w.buf[:pos-written]
		w.shardTok = w.docStart
		return nil
	}
	keep := pos / cb
	tail := w.buf[:pos-keep*cb]
	if _, err := w.shard.ReadAt(tail, headerSize+keep*cb); err != nil {
		return w.fail(fmt.Errorf("tokshard: read back %s: %w", w.shard.Name(), err))
	}
	if err := w.shard.Truncate(headerSize + keep*cb); err != nil {
		return w.fail(fmt.Errorf("tokshard: %w", err))
	}
	if _, err := w.shard.Seek(0, io.SeekEnd); err != nil {
		return w.fail(fmt.Errorf("tokshard: %w", err))
	}
	w.crcs = w.crcs[:w.shardCrc0+int(keep)]
	w.buf = tail
	w.shardTok = w.docStart
	return nil
}

// WriteDoc writes one whole document.
func (w *Writer) WriteDoc(tokens []int32) error {
	if err := w.BeginDoc(); err != nil {
		return err
	}
	if err := w.Write(tokens); err != nil {
		return err
	}
	return w.EndDoc()
}

// Docs and Tokens are the counts written so far.
func (w *Writer) Docs() uint64   { return w.numDocs }
func (w *Writer) Tokens() uint64 { return w.total }

func (w *Writer) flushChunk() error {
	if len(w.buf) == 0 {
		return nil
	}
	w.crcs = append(w.crcs, crc32.Checksum(w.buf, castagnoli))
	if _, err := w.shard.Write(w.buf); err != nil {
		return fmt.Errorf("tokshard: write %s: %w", w.shard.Name(), err)
	}
	w.buf = w.buf[:0]
	return nil
}

func (w *Writer) openShard() error {
	if len(w.shards) >= maxShards {
		return fmt.Errorf("tokshard: more than %d shards", maxShards)
	}
	f, err := os.Create(filepath.Join(w.dir, shardName(len(w.shards))+".tmp"))
	if err != nil {
		return fmt.Errorf("tokshard: %w", err)
	}
	var h [headerSize]byte // rewritten with the token count on close
	if _, err := f.Write(h[:]); err != nil {
		f.Close()
		return fmt.Errorf("tokshard: %w", err)
	}
	w.shard, w.shardIdx, w.shardTok, w.shardDocs, w.shardCrc0 = f, len(w.shards), 0, 0, len(w.crcs)
	return nil
}

func (w *Writer) closeShard() error {
	if err := w.flushChunk(); err != nil {
		return w.fail(err)
	}
	var h [headerSize]byte
	copy(h[:], shardMagic)
	le.PutUint32(h[8:], Version)
	le.PutUint32(h[12:], uint32(w.width))
	le.PutUint32(h[16:], uint32(w.shardIdx))
	le.PutUint64(h[24:], uint64(w.shardTok))
	f := w.shard
	w.shard = nil
	tmp := f.Name()
	if _, err := f.WriteAt(h[:], 0); err != nil {
		f.Close()
		return w.fail(fmt.Errorf("tokshard: %w", err))
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return w.fail(fmt.Errorf("tokshard: fsync %s: %w", tmp, err))
	}
	if err := f.Close(); err != nil {
		return w.fail(fmt.Errorf("tokshard: %w", err))
	}
	if err := os.Rename(tmp, filepath.Join(w.dir, shardName(w.shardIdx))); err != nil {
		return w.fail(fmt.Errorf("tokshard: %w", err))
	}
	w.shards = append(w.shards, [2]uint64{uint64(w.shardTok), uint64(w.shardDocs)})
	return nil
}

// Close finishes the last shard and commits the index. A document still open
// is an error (nothing is committed).
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	if w.inDoc {
		w.fail(errors.New("tokshard: Close inside a document"))
	}
	if w.err != nil {
		w.Abort()
		return w.err
	}
	w.closed = true
	if w.shard != nil {
		if err := w.closeShard(); err != nil {
			w.Abort()
			return err
		}
	}
	if err := w.writeIndex(); err != nil {
		w.err = err
		w.Abort()
		return err
	}
	return nil
}

func (w *Writer) writeIndex() error {
	if err := w.docsBuf.Flush(); err != nil {
		return fmt.Errorf("tokshard: %w", err)
	}
	if _, err := w.docs.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("tokshard: %w", err)
	}
	tmp := filepath.Join(w.dir, IndexFile+".tmp")
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("tokshard: %w", err)
	}
	defer f.Close()
	h := crc32.New(castagnoli)
	bw := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<16)
	var hd [headerSize]byte
	copy(hd[:], indexMagic)
	le.PutUint32(hd[8:], Version)
	le.PutUint32(hd[12:], uint32(w.width))
	le.PutUint32(hd[16:], uint32(w.o.Vocab))
	le.PutUint32(hd[20:], uint32(w.o.ChunkBytes))
	le.PutUint32(hd[24:], uint32(len(w.shards)))
	le.PutUint64(hd[32:], w.numDocs)
	le.PutUint64(hd[40:], w.total)
	le.PutUint64(hd[48:], uint64(len(w.crcs)))
	bw.Write(hd[:])
	for _, s := range w.shards {
		var e [shardEntry]byte
		le.PutUint64(e[0:], s[0])
		le.PutUint64(e[8:], s[1])
		bw.Write(e[:])
	}
	if n, err := io.Copy(bw, w.docs); err != nil || uint64(n) != w.numDocs*docEntry {
		return fmt.Errorf("tokshard: copy document table: %d bytes, %v", n, err)
	}
	for _, c := range w.crcs {
		var e [4]byte
		le.PutUint32(e[:], c)
		bw.Write(e[:])
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("tokshard: write %s: %w", tmp, err)
	}
	var tr [trailerSize]byte
	le.PutUint32(tr[0:], h.Sum32())
	copy(tr[8:], trailerMagic)
	if _, err := f.Write(tr[:]); err != nil {
		return fmt.Errorf("tokshard: write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("tokshard: fsync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("tokshard: %w", err)
	}
	w.docs.Close()
	os.Remove(w.docs.Name())
	if err := os.Rename(tmp, filepath.Join(w.dir, IndexFile)); err != nil {
		return fmt.Errorf("tokshard: %w", err)
	}
	return syncDir(w.dir)
}

// Abort removes the temporary files; committed shards of an uncommitted
// dataset are left (no index names them).
func (w *Writer) Abort() {
	w.closed = true
	if w.shard != nil {
		w.shard.Close()
		os.Remove(w.shard.Name())
		w.shard = nil
	}
	if w.docs != nil {
		w.docs.Close()
		os.Remove(w.docs.Name())
	}
	os.Remove(filepath.Join(w.dir, IndexFile+".tmp"))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("tokshard: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("tokshard: fsync %s: %w", dir, err)
	}
	return nil
}
