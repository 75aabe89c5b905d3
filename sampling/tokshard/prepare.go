package tokshard

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/moetrain/moetrain/tokenizer"
)

// Tokenizer turns text into token ids. Append must be chunkable: tokenizing a
// text in pieces gives the tokens of the whole (true of the byte tokenizer),
// or, for a Cutter, in pieces cut where it says.
type Tokenizer interface {
	Name() string
	Vocab() int
	Append(dst []int32, text []byte) []int32
}

// Cutter is a Tokenizer that is chunkable only at some positions: Cut
// returns the largest p in (0, len(text)) at which encoding text[:p] and
// the rest apart gives the tokens of the whole, or 0 if it finds none. Both
// paths of Prepare then cut text files in the same chunks (chunkCut), so
// they agree even where a chunk has no safe cut.
type Cutter interface {
	Cut(text []byte) int
}

// bpeTokenizer adapts a BPE tokenizer.json: its Name is the tokenizer's
// fingerprint, which the summary records.
type bpeTokenizer struct{ b *tokenizer.BPE }

func (t bpeTokenizer) Name() string                            { return t.b.Fingerprint() }
func (t bpeTokenizer) Vocab() int                              { return t.b.VocabSize() }
func (t bpeTokenizer) Append(dst []int32, text []byte) []int32 { return t.b.Append(dst, text) }
func (t bpeTokenizer) Cut(text []byte) int                     { return t.b.SafeCut(text) }

// chunkCut is where a text chunk b (not the file's last) ends: after the
// last complete UTF-8 sequence (a byte that is not a continuation byte
// within the last 4, else before the last byte), then, for a Cutter, at
// its last safe cut before that if it has one.
func chunkCut(b []byte, tk Tokenizer) int {
	c := len(b) - 1
	for k := len(b) - 1; k >= max(len(b)-4, 1); k-- {
		if b[k]&0xC0 != 0x80 {
			c = k
			break
		}
	}
	if ct, ok := tk.(Cutter); ok {
		if p := ct.Cut(b[:c]); p > 0 {
			c = p
		}
	}
	return c
}

// ByteTokenizer is sampling's byte tokenizer (sampling.ByteTokenize): every
// byte is its own id, vocabulary 256.
type ByteTokenizer struct{}

func (ByteTokenizer) Name() string { return "byte" }
func (ByteTokenizer) Vocab() int   { return 256 }
func (ByteTokenizer) Append(dst []int32, text []byte) []int32 {
	for _, c := range text {
		dst = append(dst, int32(c))
	}
	return dst
}

// TokenizerByName returns the byte tokenizer for "" or "byte" and
// otherwise loads a byte-level BPE tokenizer.json (docs/tokenizer.md);
// one that adds a prefix space is refused (no chunk cut is safe with it).
func TokenizerByName(name string) (Tokenizer, error) {
	if tokenizer.IsByte(name) {
		return ByteTokenizer{}, nil
	}
	b, err := tokenizer.LoadFile(name)
	if err != nil {
		return nil, err
	}
	if b.AddPrefixSpace() {
		return nil, fmt.Errorf("tokenizer %s: pre_tokenizer.add_prefix_space = true is not supported by data prepare", name)
	}
	return bpeTokenizer{b}, nil
}

// BinaryInvalidShare is the share of bytes in invalid UTF-8 sequences above
// which a file without NUL bytes is called binary rather than non-UTF-8 text.
const BinaryInvalidShare = 0.30

// Skip reasons in the summary.
const (
	ReasonEmpty      = "empty"       // 0 bytes
	ReasonBinary     = "binary"      // a NUL byte, or more than BinaryInvalidShare invalid UTF-8
	ReasonNonUTF8    = "non-utf8"    // some invalid UTF-8 (at most BinaryInvalidShare)
	ReasonNotRegular = "not-regular" // symlink, device, socket...
	ReasonNoRecords  = "no-records"  // JSONL without one non-empty text record
	ReasonCorrupt    = "corrupt"     // unreadable compressed stream (records before the damage are kept)
)

// PrepareOptions configure Prepare.
type PrepareOptions struct {
	Data, Out     string
	TextField     string    // JSONL field with the text; "" = "text"
	Tokenizer     Tokenizer // nil = ByteTokenizer
	ShardTokens   int64     // 0 = DefaultShardTokens
	Progress      io.Writer // progress lines every ProgressEvery; nil = none
	ProgressEvery time.Duration
	// Workers is the number of tokenizing goroutines: 0 = one per CPU; 1 =
	// the serial path (read, check and tokenize on the calling goroutine),
	// which the parallel path must match byte for byte.
	Workers int
}

// Skipped is one skipped file (or, for JSONL records, file:line).
type Skipped struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
	Detail string `json:"detail,omitempty"`
}

// Summary is what Prepare did; it is also written as JSON to Out/SummaryFile.
type Summary struct {
	Data             string         `json:"data"`
	Out              string         `json:"out"`
	Tokenizer        string         `json:"tokenizer"`
	Vocab            int            `json:"vocab"`
	TokenBytes       int            `json:"token_bytes"`
	FilesSeen        int            `json:"files_seen"`
	FilesIngested    int            `json:"files_ingested"`
	Docs             uint64         `json:"documents"`
	Tokens           uint64         `json:"tokens"`
	BytesRead        int64          `json:"bytes_read"` // text bytes after decompression
	Shards           int            `json:"shards"`
	SkippedFiles     map[string]int `json:"skipped_files"`   // reason -> files
	SkippedRecords   map[string]int `json:"skipped_records"` // reason -> JSONL records (empty text, bad JSON, long line)
	Skipped          []Skipped      `json:"skipped"`         // the first MaxListed
	SkippedTruncated bool           `json:"skipped_truncated,omitempty"`
	Seconds          float64        `json:"seconds"`
	MBPerSecond      float64        `json:"mb_per_s"`
}

// MaxListed caps the skipped entries listed by name in a summary.
const MaxListed = 1000

const readChunk = 1 << 16

type preparer struct {
	o     PrepareOptions
	w     *Writer
	s     *Summary
	buf   []byte
	toks  []int32
	start time.Time
	last  time.Time
}

// Prepare streams o.Data (a directory walked in sorted order with hidden
// entries skipped, a text file, or a .jsonl/.json file, optionally .gz or
// .zst compressed) into a dataset in o.Out. The serial path (Workers 1)
// reads text files twice (check, then tokenize); the parallel path
// (pipeline.go) reads them once in chunks and takes a document back when a
// later chunk shows the file must be skipped. Either way nothing larger than
// a bounded number of read chunks or JSONL records is held in memory.
func Prepare(o PrepareOptions) (*Summary, error) {
	if o.TextField == "" {
		o.TextField = "text"
	}
	if o.Tokenizer == nil {
		o.Tokenizer = ByteTokenizer{}
	}
	if o.ProgressEvery == 0 {
		o.ProgressEvery = 2 * time.Second
	}
	if o.Workers < 0 {
		return nil, fmt.Errorf("prepare: %d workers, want 0 (one per CPU) or more", o.Workers)
	}
	st, err := os.Stat(o.Data)
	if err != nil {
		return nil, fmt.Errorf("prepare: %w", err)
	}
	w, err := Create(o.Out, WriterOptions{Vocab: o.Tokenizer.Vocab(), ShardTokens: o.ShardTokens})
	if err != nil {
		return nil, fmt.Errorf("prepare: %w", err)
	}
	p := &preparer{o: o, w: w, buf: make([]byte, readChunk), start: time.Now(),
		s: &Summary{Data: o.Data, Out: o.Out, Tokenizer: o.Tokenizer.Name(), Vocab: o.Tokenizer.Vocab(),
			TokenBytes: WidthFor(o.Tokenizer.Vocab()), SkippedFiles: map[string]int{}, SkippedRecords: map[string]int{}}}
	p.last = p.start
	if o.Workers == 1 {
		err = walkInputs(o.Data, o.Out, st.IsDir(), p.file, func(path, typ string) {
			p.s.FilesSeen++
			p.skip(path, ReasonNotRegular, typ, true)
		})
	} else {
		err = p.pipeline(st.IsDir())
	}
	if err != nil {
		w.Abort()
		return nil, fmt.Errorf("prepare: %w", err)
	}
	if p.s.Docs == 0 {
		w.Abort()
		return p.s, fmt.Errorf("prepare: %s holds no documents (%s)", o.Data, p.skipLine())
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("prepare: %w", err)
	}
	p.s.Shards = len(w.shards)
	p.s.Seconds = time.Since(p.start).Seconds()
	p.s.MBPerSecond = float64(p.s.BytesRead) / 1e6 / max(p.s.Seconds, 1e-9)
	if err := writeSummary(o.Out, p.s); err != nil {
		return nil, fmt.Errorf("prepare: %w", err)
	}
	return p.s, nil
}

// walkInputs calls file for every regular input file of data (itself when
// not a directory) in sorted order, skipping hidden entries and the output
// directory, and other for entries that are not regular files.
func walkInputs(data, out string, isDir bool, file func(path string) error, other func(path, typ string)) error {
	if !isDir {
		return file(data)
	}
	outAbs, _ := filepath.Abs(out)
	return filepath.WalkDir(data, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path != data && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			if a, _ := filepath.Abs(path); a == outAbs {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			other(path, d.Type().String())
			return nil
		}
		return file(path)
	})
}

func (p *preparer) skip(path, reason, detail string, file bool) {
	if file {
		p.s.SkippedFiles[reason]++
	} else {
		p.s.SkippedRecords[reason]++
	}
	if len(p.s.Skipped) < MaxListed {
		p.s.Skipped = append(p.s.Skipped, Skipped{Path: path, Reason: reason, Detail: detail})
	} else {
		p.s.SkippedTruncated = true
	}
}

func (p *preparer) skipLine() string {
	var parts []string
	for _, m := range []map[string]int{p.s.SkippedFiles, p.s.SkippedRecords} {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%d %s", m[k], k))
		}
	}
	if len(parts) == 0 {
		return "nothing skipped"
	}
	return "skipped " + strings.Join(parts, ", ")
}

func (p *preparer) progress() {
	if p.o.Progress == nil || time.Since(p.last) < p.o.ProgressEvery {
		return
	}
	p.last = time.Now()
	sec := time.Since(p.start).Seconds()
	fmt.Fprintf(p.o.Progress, "prepare: %d files, %d documents, %.1f MB read, %d tokens, %.1f MB/s\n",
		p.s.FilesSeen, p.w.Docs(), float64(p.s.BytesRead)/1e6, p.w.Tokens(), float64(p.s.BytesRead)/1e6/sec)
}

// Line is the one-line report of a summary.
func (s *Summary) Line() string {
	p := preparer{s: s}
	return fmt.Sprintf("prepared %s -> %s: %d files seen, %d ingested, %d documents, %d tokens (%d-byte %s tokens) in %d shard(s), %.1f MB in %.1fs (%.1f MB/s); %s",
		s.Data, s.Out, s.FilesSeen, s.FilesIngested, s.Docs, s.Tokens, s.TokenBytes, s.Tokenizer, s.Shards,
		float64(s.BytesRead)/1e6, s.Seconds, s.MBPerSecond, p.skipLine())
}

func jsonlKind(path string) (compression string, ok bool) {
	l := strings.ToLower(path)
	for _, c := range []string{"", ".gz", ".zst"} {
		if strings.HasSuffix(l, ".jsonl"+c) || strings.HasSuffix(l, ".json"+c) {
			return c, true
		}
	}
	return "", false
}

func (p *preparer) file(path string) error {
	p.s.FilesSeen++
	defer p.progress()
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if st.Size() == 0 {
		p.skip(path, ReasonEmpty, "0 bytes", true)
		return nil
	}
	if comp, ok := jsonlKind(path); ok {
		return p.jsonl(path, comp)
	}
	reason, detail, err := p.classify(path)
	if err != nil {
		return err
	}
	if reason != "" {
		p.skip(path, reason, detail, true)
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := p.w.BeginDoc(); err != nil {
		return err
	}
	if _, ok := p.o.Tokenizer.(Cutter); ok {
		if err := p.textChunks(f, path); err != nil {
			return err
		}
	} else {
		for {
			n, rerr := f.Read(p.buf)
			if n > 0 {
				p.s.BytesRead += int64(n)
				p.toks = p.o.Tokenizer.Append(p.toks[:0], p.buf[:n])
				if err := p.w.Write(p.toks); err != nil {
					return err
				}
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				return fmt.Errorf("%s: %w", path, rerr)
			}
		}
	}
	if err := p.w.EndDoc(); err != nil {
		return err
	}
	p.s.FilesIngested++
	p.s.Docs++
	p.s.Tokens = p.w.Tokens()
	return nil
}

// textChunks is the serial path's text loop for a Cutter: the same chunks
// as the parallel reader (unitBytes, cut by chunkCut), each encoded apart.
func (p *preparer) textChunks(f *os.File, path string) error {
	buf := make([]byte, 0, unitBytes)
	for {
		n, rerr := io.ReadFull(f, buf[len(buf):unitBytes])
		p.s.BytesRead += int64(n)
		buf = buf[:len(buf)+n]
		eof := rerr == io.EOF || rerr == io.ErrUnexpectedEOF
		if rerr != nil && !eof {
			return fmt.Errorf("%s: %w", path, rerr)
		}
		c := len(buf)
		if !eof {
			c = chunkCut(buf, p.o.Tokenizer)
		}
		p.toks = p.o.Tokenizer.Append(p.toks[:0], buf[:c])
		if err := p.w.Write(p.toks); err != nil {
			return err
		}
		if eof {
			return nil
		}
		buf = buf[:copy(buf, buf[c:])]
	}
}

// classify reads a text file once: "" if it is UTF-8 text without NUL bytes,
// else the skip reason and a detail naming the first offending offset.
func (p *preparer) classify(path string) (reason, detail string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	var total, invalid int64
	firstBad := int64(-1)
	carry := 0 // bytes of an incomplete rune kept at the front of buf
	for {
		n, rerr := f.Read(p.buf[carry:])
		b := p.buf[:carry+n]
		eof := rerr == io.EOF
		if rerr != nil && !eof {
			return "", "", fmt.Errorf("%s: %w", path, rerr)
		}
		if i := bytes.IndexByte(b[carry:], 0); i >= 0 {
			return ReasonBinary, fmt.Sprintf("NUL byte at offset %d", total+int64(carry+i)), nil
		}
		i := 0
		for i < len(b) {
			if b[i] < utf8.RuneSelf {
				i++
				continue
			}
			if !eof && !utf8.FullRune(b[i:]) {
				break
			}
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				invalid++
				if firstBad < 0 {
					firstBad = total + int64(i)
				}
			}
			i += size
		}
		total += int64(i)
		carry = copy(p.buf, b[i:])
		if eof {
			break
		}
	}
	if invalid == 0 {
		return "", "", nil
	}
	share := float64(invalid) / float64(total)
	if share > BinaryInvalidShare {
		return ReasonBinary, fmt.Sprintf("%.0f%% of bytes invalid UTF-8 (threshold %.0f%%)", 100*share, 100*BinaryInvalidShare), nil
	}
	return ReasonNonUTF8, fmt.Sprintf("%d invalid UTF-8 bytes, first at offset %d", invalid, firstBad), nil
}

const maxRecord = 64 << 20

// openCompressed wraps f in the decompressor comp names (".gz", ".zst", or
// none); closeFn releases it. An error is a corrupt stream header.
func openCompressed(f io.Reader, comp string) (rd io.Reader, closeFn func(), err error) {
	switch comp {
	case ".gz":
		gz, err := gzip.NewReader(bufio.NewReaderSize(f, readChunk))
		if err != nil {
			return nil, nil, err
		}
		return gz, func() { gz.Close() }, nil
	case ".zst":
		zr, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<30))
		if err != nil {
			return nil, nil, err
		}
		return zr, zr.Close, nil
	}
	return f, func() {}, nil
}

// appendRecord appends br's next line ('\n' included) to buf, each piece
// only while the line stays within maxRecord bytes (long reports a cut);
// err is the read's error, io.EOF at the end.
func appendRecord(br *bufio.Reader, buf []byte) (out []byte, long bool, err error) {
	start := len(buf)
	for {
		chunk, e := br.ReadSlice('\n')
		if len(buf)-start+len(chunk) <= maxRecord {
			buf = append(buf, chunk...)
		} else {
			long = true
		}
		if e != bufio.ErrBufferFull {
			return buf, long, e
		}
	}
}

// openRecords opens the JSONL file path through the decompressor comp
// names (openCompressed) and returns a buffered reader of it and the
// function that closes both. err is a failure to open path; corrupt, a
// stream header the decompressor refused: the file is skipped.
func openRecords(path, comp string) (br *bufio.Reader, closeFn func(), corrupt, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, nil, err
	}
	rd, closeRd, corrupt := openCompressed(f, comp)
	if corrupt != nil {
		f.Close()
		return nil, nil, corrupt, nil
	}
	return bufio.NewReaderSize(rd, readChunk), func() { closeRd(); f.Close() }, nil, nil
}

func (p *preparer) jsonl(path, comp string) error {
	br, closeBr, corrupt, err := openRecords(path, comp)
	if err != nil {
		return err
	}
	if corrupt != nil {
		p.skip(path, ReasonCorrupt, corrupt.Error(), true)
		return nil
	}
	defer closeBr()
	docs := uint64(0)
	var line []byte
	for ln := 1; ; ln++ {
		var rerr error
		var long bool
		line, long, rerr = appendRecord(br, line[:0])
		p.s.BytesRead += int64(len(line))
		if rerr != nil && rerr != io.EOF {
			if docs == 0 {
				p.skip(path, ReasonCorrupt, rerr.Error(), true)
				return nil
			}
			p.skip(fmt.Sprintf("%s:%d", path, ln), ReasonCorrupt, rerr.Error()+" (earlier records kept)", true)
			break
		}
		where := fmt.Sprintf("%s:%d", path, ln)
		if text, reason, detail := parseRecord(line, long, p.o.TextField); reason != "" {
			p.skip(where, reason, detail, false)
		} else if text != nil {
			p.toks = p.o.Tokenizer.Append(p.toks[:0], text)
			if err := p.w.WriteDoc(p.toks); err != nil {
				return err
			}
			docs++
			p.s.Docs++
			p.s.Tokens = p.w.Tokens()
			p.progress()
		}
		if rerr == io.EOF {
			break
		}
	}
	if docs == 0 {
		p.skip(path, ReasonNoRecords, fmt.Sprintf("no record with a non-empty %q", p.o.TextField), true)
		return nil
	}
	p.s.FilesIngested++
	return nil
}

// parseRecord is one JSONL line's text, or the reason it is skipped; both
// are empty for a blank line.
func parseRecord(line []byte, long bool, field string) (text []byte, reason, detail string) {
	trimmed := bytes.TrimSpace(line)
	if long {
		return nil, "long-record", fmt.Sprintf("longer than %d bytes", maxRecord)
	}
	if len(trimmed) == 0 {
		return nil, "", ""
	}
	var obj map[string]json.RawMessage
	var str string
	if err := json.Unmarshal(trimmed, &obj); err != nil || obj == nil {
		return nil, "bad-json", fmt.Sprint("not a JSON object: ", err)
	}
	raw, ok := obj[field]
	if !ok {
		return nil, "no-field", fmt.Sprintf("no field %q", field)
	}
	if err := json.Unmarshal(raw, &str); err != nil {
		return nil, "bad-field", fmt.Sprintf("field %q is not a string", field)
	}
	if str == "" {
		return nil, "empty-record", fmt.Sprintf("field %q is empty", field)
	}
	return []byte(str), "", ""
}

func writeSummary(dir string, s *Summary) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, SummaryFile+".tmp")
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, SummaryFile)); err != nil {
		return err
	}
	return syncDir(dir)
}
