package tokshard

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sync"
	"unicode/utf8"
)

// The parallel path of Prepare: one reader goroutine walks the inputs and
// cuts them into units (chunks of a text file, batches of JSONL lines), N
// workers check and tokenize units, and the calling goroutine writes their
// results in input order. Units in flight are bounded (queueUnits), so memory
// is about queueUnits × unitBytes whatever the input's size. The result is
// the serial path's, byte for byte: text chunks are cut only where no UTF-8
// sequence can span the cut, and every decision (skip reasons, counts,
// record names) is taken by the writer in input order.

const (
	unitBytes     = 256 << 10 // text chunk / JSONL batch size
	queuePerCPU   = 4         // units queued per worker
	maxPooledUnit = 4 * unitBytes
)

type unitKind int

const (
	unitSkip     unitKind = iota // a file skipped unread (reason set)
	unitText                     // a chunk of a text file
	unitJSONL                    // a batch of whole JSONL lines
	unitJSONLEnd                 // the end of a JSONL file (err: the read error, if any)
	unitError                    // a fatal error (err)
)

type line struct {
	end  int // end offset in unit.data
	long bool
}

type record struct {
	reason, detail string // skipped; or
	tokens         int    // > 0 or blank line (reason "" and 0 tokens)
	doc            bool
}

type unit struct {
	kind           unitKind
	path           string
	first, last    bool // text: first / last chunk of the file; JSONL: first unit of the file
	data           []byte
	lines          []line
	line0          int   // JSONL: number of the first line
	bytesRead      int64 // JSONL: bytes counted as read (the serial path's rule)
	reason, detail string
	err            error
	done           chan struct{}

	// results (set by the worker before done is closed)
	nul      int   // text: index of the first NUL byte, -1 if none
	invalid  int64 // text: invalid UTF-8 bytes
	firstBad int   // text: index of the first invalid byte, -1 if none
	enc      Encoded
	recs     []record
}

var dataPool = sync.Pool{New: func() any { b := make([]byte, 0, unitBytes+utf8.UTFMax); return &b }}

func getData() []byte { return (*(dataPool.Get().(*[]byte)))[:0] }

func putData(b []byte) {
	if cap(b) <= maxPooledUnit {
		dataPool.Put(&b)
	}
}

var encPool = sync.Pool{New: func() any { return new(Encoded) }}

func (p *preparer) pipeline(isDir bool) error {
	n := p.o.Workers
	if n <= 0 {
		n = runtime.NumCPU()
	}
	quit := make(chan struct{})
	work := make(chan *unit, n*queuePerCPU)
	order := make(chan *unit, n*queuePerCPU)
	var wg sync.WaitGroup
	defer func() {
		close(quit) // stops the reader and workers if the writer gave up
		wg.Wait()
	}()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var toks []int32
			for {
				select {
				case <-quit:
					return
				case u, ok := <-work:
					if !ok {
						return
					}
					toks = p.process(u, toks)
					close(u.done)
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(work)
		defer close(order)
		r := reader{o: p.o, work: work, order: order, quit: quit}
		err := walkInputs(p.o.Data, p.o.Out, isDir, r.file, func(path, typ string) {
			r.emit(&unit{kind: unitSkip, path: path, reason: ReasonNotRegular, detail: typ})
		})
		if err != nil {
			r.emit(&unit{kind: unitError, err: err})
		}
	}()
	var f fileState
	for u := range order {
		<-u.done // every unit in order was queued in work first, so a worker takes it
		err := p.consume(u, &f)
		if u.kind == unitText || u.kind == unitJSONL {
			putData(u.data)
			if e := u.enc.Reset(); cap(e.b) <= 2*maxPooledUnit {
				encPool.Put(&e)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// reader cuts inputs into units and queues them (work, then order).
type reader struct {
	o           PrepareOptions
	work, order chan *unit
	quit        chan struct{}
	stopped     bool
}

// emit queues u; units without work are done at once. It reports false
// once the writer has quit.
func (r *reader) emit(u *unit) bool {
	if r.stopped {
		return false
	}
	u.done = make(chan struct{})
	if u.kind == unitText || u.kind == unitJSONL {
		select {
		case r.work <- u:
		case <-r.quit:
			r.stopped = true
			return false
		}
	} else {
		close(u.done)
	}
	select {
	case r.order <- u:
		return true
	case <-r.quit:
		r.stopped = true
		return false
	}
}

var errStopped = errors.New("prepare: stopped")

func (r *reader) file(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if st.Size() == 0 {
		r.emit(&unit{kind: unitSkip, path: path, reason: ReasonEmpty, detail: "0 bytes"})
	} else if comp, ok := jsonlKind(path); ok {
		err = r.jsonl(path, comp)
	} else {
		err = r.text(path)
	}
	if err == nil && r.stopped {
		return errStopped
	}
	return err
}

// text queues a text file in chunks of about unitBytes, cut where no UTF-8
// sequence can span the cut: before a byte that is not a continuation byte
// (found within the last 4 bytes), or, if the last 4 are all continuation
// bytes, before the last one (no lead byte lies within 3 bytes before it).
func (r *reader) text(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var carry []byte
	first := true
	for {
		b := append(getData(), carry...)
		n, rerr := io.ReadFull(f, b[len(b):unitBytes])
		b = b[:len(b)+n]
		eof := rerr == io.EOF || rerr == io.ErrUnexpectedEOF
		if rerr != nil && !eof {
			return fmt.Errorf("%s: %w", path, rerr)
		}
		if !eof {
			c := chunkCut(b, r.o.Tokenizer)
			carry = append(carry[:0], b[c:]...)
			b = b[:c]
		}
		if !r.emit(&unit{kind: unitText, path: path, first: first, last: eof, data: b}) {
			return nil
		}
		first = false
		if eof {
			return nil
		}
	}
}

// jsonl queues a JSONL file's lines in batches, reading them exactly as the
// serial path does (the same line numbers, long-line rule and byte counts).
func (r *reader) jsonl(path, comp string) error {
	br, closeBr, corrupt, err := openRecords(path, comp)
	if err != nil {
		return err
	}
	if corrupt != nil {
		r.emit(&unit{kind: unitSkip, path: path, reason: ReasonCorrupt, detail: corrupt.Error()})
		return nil
	}
	defer closeBr()
	u := &unit{kind: unitJSONL, path: path, first: true, line0: 1, data: getData()}
	for ln := 1; ; ln++ {
		start := len(u.data)
		var long bool
		var rerr error
		u.data, long, rerr = appendRecord(br, u.data)
		if rerr != nil && rerr != io.EOF {
			u.bytesRead += int64(len(u.data) - start)
			u.data = u.data[:start]
			if !r.emit(u) {
				return nil
			}
			r.emit(&unit{kind: unitJSONLEnd, path: path, line0: ln, err: rerr})
			return nil
		}
		u.bytesRead += int64(len(u.data) - start)
		u.lines = append(u.lines, line{end: len(u.data), long: long})
		if rerr == io.EOF {
			if !r.emit(u) {
				return nil
			}
			r.emit(&unit{kind: unitJSONLEnd, path: path, line0: ln})
			return nil
		}
		if len(u.data) >= unitBytes {
			if !r.emit(u) {
				return nil
			}
			u = &unit{kind: unitJSONL, path: path, line0: ln + 1, data: getData()}
		}
	}
}

// process runs on a worker: it checks and tokenizes u.
func (p *preparer) process(u *unit, toks []int32) []int32 {
	e := encPool.Get().(*Encoded)
	u.enc = *e
	vocab := p.o.Tokenizer.Vocab()
	var err error
	switch u.kind {
	case unitText:
		u.nul, u.firstBad = bytes.IndexByte(u.data, 0), -1
		if u.nul >= 0 {
			return toks
		}
		valid := utf8.Valid(u.data) // fast path; the count below is for invalid chunks
		for i := 0; i < len(u.data) && !valid; {
			if u.data[i] < utf8.RuneSelf {
				i++
				continue
			}
			r, size := utf8.DecodeRune(u.data[i:])
			if r == utf8.RuneError && size == 1 {
				u.invalid++
				if u.firstBad < 0 {
					u.firstBad = i
				}
			}
			i += size
		}
		if u.invalid > 0 {
			return toks // the file is skipped whatever follows
		}
		if _, ok := p.o.Tokenizer.(ByteTokenizer); ok {
			u.enc = appendBytes(u.enc, u.data)
			break
		}
		toks = p.o.Tokenizer.Append(toks[:0], u.data)
		u.enc, err = AppendEncoded(u.enc, vocab, toks)
	case unitJSONL:
		start := 0
		for _, l := range u.lines {
			text, reason, detail := parseRecord(u.data[start:l.end], l.long, p.o.TextField)
			start = l.end
			rec := record{reason: reason, detail: detail}
			if _, ok := p.o.Tokenizer.(ByteTokenizer); ok && text != nil {
				u.enc = appendBytes(u.enc, text)
				rec.doc, rec.tokens = true, len(text)
			} else if text != nil {
				toks = p.o.Tokenizer.Append(toks[:0], text)
				if u.enc, err = AppendEncoded(u.enc, vocab, toks); err != nil {
					break
				}
				rec.doc, rec.tokens = true, len(toks)
			}
			u.recs = append(u.recs, rec)
		}
	}
	u.err = err
	return toks
}

// appendBytes is AppendEncoded of ByteTokenizer's tokens of text, in one
// pass (every byte is in its 256-token vocabulary).
func appendBytes(e Encoded, text []byte) Encoded {
	e.vocab = ByteTokenizer{}.Vocab()
	n := len(e.b)
	e.b = slices.Grow(e.b, 2*len(text))[:n+2*len(text)]
	out := e.b[n:]
	for i, c := range text {
		out[2*i] = c // little-endian uint16: low byte, then 0
		out[2*i+1] = 0
	}
	return e
}

// fileState is the writer's view of the file being written.
type fileState struct {
	offset   int64 // text: bytes of the file before this chunk
	skipped  bool  // text: the file is already known to be skipped
	inDoc    bool
	reason   string
	detail   string
	invalid  int64
	firstBad int64
	bytes    int64
	docs     uint64 // JSONL: documents written
}

// consume applies one unit's result in input order, as the serial path does.
func (p *preparer) consume(u *unit, f *fileState) error {
	if u.err != nil && u.kind != unitJSONLEnd {
		return u.err
	}
	switch u.kind {
	case unitError:
		return u.err
	case unitSkip:
		p.s.FilesSeen++
		p.skip(u.path, u.reason, u.detail, true)
		p.progress()
	case unitText:
		if u.first {
			p.s.FilesSeen++
			*f = fileState{firstBad: -1}
			if err := p.w.BeginDoc(); err != nil {
				return err
			}
			f.inDoc = true
		}
		switch {
		case f.skipped:
		case u.nul >= 0:
			f.skipped, f.reason, f.detail = true, ReasonBinary, fmt.Sprintf("NUL byte at offset %d", f.offset+int64(u.nul))
		case u.invalid > 0:
			if f.firstBad < 0 {
				f.firstBad = f.offset + int64(u.firstBad)
			}
			f.invalid += u.invalid
		case f.invalid == 0:
			if err := p.w.WriteEncoded(u.enc); err != nil {
				return err
			}
			f.bytes += int64(len(u.data))
		}
		f.offset += int64(len(u.data))
		if f.inDoc && (f.skipped || f.invalid > 0) {
			if err := p.w.AbortDoc(); err != nil {
				return err
			}
			f.inDoc = false
		}
		if !u.last {
			return nil
		}
		if f.invalid > 0 && !f.skipped {
			f.skipped = true
			share := float64(f.invalid) / float64(f.offset)
			if share > BinaryInvalidShare {
				f.reason, f.detail = ReasonBinary, fmt.Sprintf("%.0f%% of bytes invalid UTF-8 (threshold %.0f%%)", 100*share, 100*BinaryInvalidShare)
			} else {
				f.reason, f.detail = ReasonNonUTF8, fmt.Sprintf("%d invalid UTF-8 bytes, first at offset %d", f.invalid, f.firstBad)
			}
		}
		if f.skipped {
			p.skip(u.path, f.reason, f.detail, true)
		} else {
			if err := p.w.EndDoc(); err != nil {
				return err
			}
			p.s.BytesRead += f.bytes
			p.s.FilesIngested++
			p.s.Docs++
			p.s.Tokens = p.w.Tokens()
		}
		p.progress()
	case unitJSONL:
		if u.first {
			p.s.FilesSeen++
			*f = fileState{}
		}
		p.s.BytesRead += u.bytesRead
		enc := u.enc.b
		width := WidthFor(u.enc.vocab)
		for i, rec := range u.recs {
			switch {
			case rec.reason != "":
				p.skip(fmt.Sprintf("%s:%d", u.path, u.line0+i), rec.reason, rec.detail, false)
			case rec.doc:
				n := rec.tokens * width
				if err := p.w.BeginDoc(); err != nil {
					return err
				}
				if err := p.w.WriteEncoded(Encoded{b: enc[:n], vocab: u.enc.vocab}); err != nil {
					return err
				}
				if err := p.w.EndDoc(); err != nil {
					return err
				}
				enc = enc[n:]
				f.docs++
				p.s.Docs++
				p.s.Tokens = p.w.Tokens()
				p.progress()
			}
		}
	case unitJSONLEnd:
		p.s.BytesRead += u.bytesRead
		if u.err != nil {
			if f.docs == 0 {
				p.skip(u.path, ReasonCorrupt, u.err.Error(), true)
				p.progress()
				return nil
			}
			p.skip(fmt.Sprintf("%s:%d", u.path, u.line0), ReasonCorrupt, u.err.Error()+" (earlier records kept)", true)
		}
		if f.docs == 0 {
			p.skip(u.path, ReasonNoRecords, fmt.Sprintf("no record with a non-empty %q", p.o.TextField), true)
		} else {
			p.s.FilesIngested++
		}
		p.progress()
	}
	return nil
}
