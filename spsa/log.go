package spsa

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"
)

// The log is the record of every applied step since a checkpoint: a worker
// that joins loads the checkpoint and replays it instead of receiving the
// weights. Layout (little endian):
//
//	header: magic "MTSPSA01" | quant u32 (1 int8, 2 fp32) | base u32 |
//	        lr f64 | clip f64 | seed u64 | crc32c u32 of the 40 bytes before
//	record: body length u32 | crc32c u32 of the body |
//	        body: step u64 | n u32 | n × (worker u32 | dir u32 | raw u32)
//
// The header holds what replay needs besides the records (ε and the
// direction count only shape the measurement, not the update), and base:
// the Checksum of the parameters the log starts from (0 = not recorded),
// so replaying onto other parameters is refused rather than silently wrong. Records are
// appended and fsync'd one per step; steps are consecutive. A record longer
// than MaxLogEntries entries is refused before anything is allocated for
// it.

// MaxLogEntries bounds the entries of one record (one step of every
// worker's directions).
const MaxLogEntries = 1 << 16

const (
	logMagic      = "MTSPSA01"
	logHeaderSize = 44
	recHeaderSize = 8
	entrySize     = 12
	recFixed      = 12 // step u64 + n u32
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Record is one step's entries, in the order they were applied.
type Record struct {
	Step    int64
	Entries []Entry
}

// ErrCorruptLog is wrapped by every error about a log's contents.
var ErrCorruptLog = errors.New("corrupt spsa log")

func quantCode(q string) uint32 {
	if q == QuantFP32 {
		return 2
	}
	return 1
}

func encodeLogHeader(c Config, base uint32) []byte {
	b := make([]byte, logHeaderSize)
	copy(b, logMagic)
	binary.LittleEndian.PutUint32(b[8:], quantCode(c.Quant))
	binary.LittleEndian.PutUint32(b[12:], base)
	binary.LittleEndian.PutUint64(b[16:], math.Float64bits(c.LR))
	binary.LittleEndian.PutUint64(b[24:], math.Float64bits(c.Clip))
	binary.LittleEndian.PutUint64(b[32:], c.Seed)
	binary.LittleEndian.PutUint32(b[40:], crc32.Checksum(b[:40], castagnoli))
	return b
}

// LogParams are the settings a log was written with: what replay needs.
type LogParams struct {
	Quant string
	LR    float64
	Clip  float64
	Seed  uint64
	// Base is the Checksum of the parameters the first record applies to
	// (0 = not recorded).
	Base uint32
}

// sameJob reports whether p and q differ at most in Base.
func (p LogParams) sameJob(q LogParams) bool {
	p.Base = q.Base
	return p == q
}

// Params is the part of c that a log records (Base 0).
func (c Config) Params() LogParams {
	return LogParams{Quant: c.Quant, LR: c.LR, Clip: c.Clip, Seed: c.Seed}
}

func decodeLogHeader(b []byte) (LogParams, error) {
	var p LogParams
	if len(b) < logHeaderSize {
		return p, fmt.Errorf("%w: header is %d bytes, want %d", ErrCorruptLog, len(b), logHeaderSize)
	}
	if string(b[:8]) != logMagic {
		return p, fmt.Errorf("%w: magic %q, want %q", ErrCorruptLog, b[:8], logMagic)
	}
	if got, want := binary.LittleEndian.Uint32(b[40:]), crc32.Checksum(b[:40], castagnoli); got != want {
		return p, fmt.Errorf("%w: header checksum %08x, want %08x", ErrCorruptLog, got, want)
	}
	switch binary.LittleEndian.Uint32(b[8:]) {
	case 1:
		p.Quant = QuantInt8
	case 2:
		p.Quant = QuantFP32
	default:
		return p, fmt.Errorf("%w: header: unknown quantization code %d", ErrCorruptLog, binary.LittleEndian.Uint32(b[8:]))
	}
	p.Base = binary.LittleEndian.Uint32(b[12:])
	p.LR = math.Float64frombits(binary.LittleEndian.Uint64(b[16:]))
	p.Clip = math.Float64frombits(binary.LittleEndian.Uint64(b[24:]))
	p.Seed = binary.LittleEndian.Uint64(b[32:])
	return p, nil
}

// appendRecord appends r's encoding to b.
func appendRecord(b []byte, r Record) []byte {
	n := recFixed + entrySize*len(r.Entries)
	start := len(b)
	b = binary.LittleEndian.AppendUint32(b, uint32(n))
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = binary.LittleEndian.AppendUint64(b, uint64(r.Step))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(r.Entries)))
	for _, e := range r.Entries {
		b = binary.LittleEndian.AppendUint32(b, e.Worker)
		b = binary.LittleEndian.AppendUint32(b, e.Dir)
		b = binary.LittleEndian.AppendUint32(b, e.Raw)
	}
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(b[start+recHeaderSize:], castagnoli))
	return b
}

// TornTailError reports bytes at the end of a log that do not form a whole
// record: an append cut short by a crash. Everything before Offset is
// intact.
type TornTailError struct {
	Offset int64 // where the incomplete record starts
	Bytes  int64 // how many bytes follow it
	Reason string
}

func (e *TornTailError) Error() string {
	return fmt.Sprintf("spsa log: incomplete record at byte %d (%d trailing bytes: %s)", e.Offset, e.Bytes, e.Reason)
}

// DecodeLog reads a whole log. It returns the header's settings and every
// intact record; a torn last record is a *TornTailError (with the records
// before it), any other damage an error wrapping ErrCorruptLog that names
// the byte offset. Steps must be consecutive, entries sorted and at most
// MaxLogEntries per record.
func DecodeLog(r io.Reader) (LogParams, []Record, error) {
	hb := make([]byte, logHeaderSize)
	if n, err := io.ReadFull(r, hb); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return LogParams{}, nil, fmt.Errorf("%w: header truncated at %d of %d bytes", ErrCorruptLog, n, logHeaderSize)
		}
		return LogParams{}, nil, err
	}
	p, err := decodeLogHeader(hb)
	if err != nil {
		return p, nil, err
	}
	recs, err := decodeRecords(r, logHeaderSize)
	return p, recs, err
}

// DecodeRecords reads records in the log's record layout (no header), as
// a log's bytes after its header or a peer's message carries them, with
// DecodeLog's checks; off is the byte offset of the first record in the
// whole log, for the errors. A torn last record is a *TornTailError.
func DecodeRecords(r io.Reader, off int64) ([]Record, error) { return decodeRecords(r, off) }

func decodeRecords(r io.Reader, off int64) ([]Record, error) {
	var recs []Record
	var rh [recHeaderSize]byte
	var body []byte
	for {
		n, err := io.ReadFull(r, rh[:])
		if errors.Is(err, io.EOF) {
			return recs, nil
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return recs, &TornTailError{Offset: off, Bytes: int64(n), Reason: "record header cut short"}
		}
		if err != nil {
			return recs, err
		}
		size := binary.LittleEndian.Uint32(rh[:])
		if size < recFixed || (size-recFixed)%entrySize != 0 || (size-recFixed)/entrySize > MaxLogEntries {
			return recs, fmt.Errorf("%w: record at byte %d: body length %d is not %d + %d·n with n ≤ %d", ErrCorruptLog, off, size, recFixed, entrySize, MaxLogEntries)
		}
		if cap(body) < int(size) {
			body = make([]byte, size)
		}
		body = body[:size]
		m, err := io.ReadFull(r, body)
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return recs, &TornTailError{Offset: off, Bytes: int64(recHeaderSize + m), Reason: fmt.Sprintf("body cut short at %d of %d bytes", m, size)}
		}
		if err != nil {
			return recs, err
		}
		if got, want := binary.LittleEndian.Uint32(rh[4:]), crc32.Checksum(body, castagnoli); got != want {
			bad := fmt.Errorf("%w: record at byte %d: checksum %08x, want %08x", ErrCorruptLog, off, got, want)
			// A bad last record is a torn append (its bytes were not all
			// written); one with records after it is damage.
			if _, err := io.ReadFull(r, rh[:1]); errors.Is(err, io.EOF) {
				return recs, &TornTailError{Offset: off, Bytes: int64(recHeaderSize) + int64(size), Reason: bad.Error()}
			}
			return recs, bad
		}
		rec := Record{Step: int64(binary.LittleEndian.Uint64(body))}
		cnt := binary.LittleEndian.Uint32(body[8:])
		if int64(cnt) != int64(size-recFixed)/entrySize {
			return recs, fmt.Errorf("%w: record at byte %d: %d entries in a body of %d bytes", ErrCorruptLog, off, cnt, size)
		}
		if rec.Step < 0 {
			return recs, fmt.Errorf("%w: record at byte %d: negative step %d", ErrCorruptLog, off, rec.Step)
		}
		if len(recs) > 0 && rec.Step != recs[len(recs)-1].Step+1 {
			return recs, fmt.Errorf("%w: record at byte %d: step %d follows step %d", ErrCorruptLog, off, rec.Step, recs[len(recs)-1].Step)
		}
		rec.Entries = make([]Entry, cnt)
		for i := range rec.Entries {
			e := body[recFixed+i*entrySize:]
			rec.Entries[i] = Entry{Worker: binary.LittleEndian.Uint32(e), Dir: binary.LittleEndian.Uint32(e[4:]), Raw: binary.LittleEndian.Uint32(e[8:])}
		}
		if err := checkEntries(rec.Entries); err != nil {
			return recs, fmt.Errorf("%w: record at byte %d (step %d): %v", ErrCorruptLog, off, rec.Step, err)
		}
		recs = append(recs, rec)
		off += recHeaderSize + int64(size)
	}
}

// Log is an open log file that records are appended to. Not safe for
// concurrent use.
type Log struct {
	f    *os.File
	path string
	p    LogParams
	next int64 // step of the next record; −1 before the first
	buf  []byte
}

// CreateLog creates a new, empty log for cfg at path, atomically (a
// temporary file in the same directory, fsync'd, renamed, directory
// fsync'd), with no base recorded. An existing file at path is an error.
func CreateLog(path string, cfg Config) (*Log, error) { return CreateLogFrom(path, cfg, 0) }

// CreateLogFrom is CreateLog recording base, the Checksum of the
// parameters the first record will apply to.
func CreateLogFrom(path string, cfg Config, base uint32) (*Log, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("spsa log %s: already exists", path)
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return nil, fmt.Errorf("spsa log %s: %w", path, err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(encodeLogHeader(cfg, base)); err != nil {
		return nil, fmt.Errorf("spsa log %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return nil, fmt.Errorf("spsa log %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return nil, fmt.Errorf("spsa log %s: %w", path, err)
	}
	if err := syncDir(dir); err != nil {
		return nil, fmt.Errorf("spsa log %s: %w", path, err)
	}
	ok = true
	p := cfg.Params()
	p.Base = base
	return &Log{f: tmp, path: path, p: p, next: -1}, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// OpenLog opens an existing log for appending and returns its records. The
// log must have been written with cfg's LR, quantization, clip and seed. A
// torn last record (a crash during an append) is cut off, and the cut
// fsync'd; any other damage is an error. The caller checks the base
// (Log.Params) against its starting parameters.
func OpenLog(path string, cfg Config) (*Log, []Record, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("spsa log: %w", err)
	}
	p, recs, err := DecodeLog(bufReader(f))
	var torn *TornTailError
	if errors.As(err, &torn) {
		if err = f.Truncate(torn.Offset); err == nil {
			err = f.Sync()
		}
	}
	if err == nil && !p.sameJob(cfg.Params()) {
		err = fmt.Errorf("written with %+v, this job has %+v", p, cfg.Params())
	}
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("spsa log %s: %w", path, err)
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("spsa log %s: %w", path, err)
	}
	l := &Log{f: f, path: path, p: p, next: -1}
	if len(recs) > 0 {
		l.next = recs[len(recs)-1].Step + 1
	}
	return l, recs, nil
}

// ReadLog reads the log at path without opening it for writing (a torn
// tail is reported, not cut).
func ReadLog(path string) (LogParams, []Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return LogParams{}, nil, fmt.Errorf("spsa log: %w", err)
	}
	defer f.Close()
	p, recs, err := DecodeLog(bufReader(f))
	if err != nil {
		err = fmt.Errorf("spsa log %s: %w", path, err)
	}
	return p, recs, err
}

// Append writes recs (each one's entries sorted, each for the step after
// the previous record's) with one write and one fsync before returning;
// nothing is written when one of them is refused.
func (l *Log) Append(recs ...Record) error {
	if len(recs) == 0 {
		return nil
	}
	l.buf = l.buf[:0]
	next := l.next
	for _, r := range recs {
		if next >= 0 && r.Step != next {
			return fmt.Errorf("spsa log %s: record for step %d, want step %d", l.path, r.Step, next)
		}
		if r.Step < 0 || len(r.Entries) > MaxLogEntries {
			return fmt.Errorf("spsa log %s: record for step %d with %d entries: want step ≥ 0 and at most %d entries", l.path, r.Step, len(r.Entries), MaxLogEntries)
		}
		if err := checkEntries(r.Entries); err != nil {
			return fmt.Errorf("spsa log %s: step %d: %w", l.path, r.Step, err)
		}
		l.buf = appendRecord(l.buf, r)
		next = r.Step + 1
	}
	_, err := l.f.Write(l.buf)
	if err == nil {
		err = l.f.Sync()
	}
	if err != nil {
		return fmt.Errorf("spsa log %s: steps %d to %d: %w", l.path, recs[0].Step, recs[len(recs)-1].Step, err)
	}
	l.next = next
	return nil
}

// Close closes the file.
func (l *Log) Close() error { return l.f.Close() }

// EncodeLog is the bytes of a log of cfg holding recs, with no base
// (tests, tools).
func EncodeLog(cfg Config, recs []Record) []byte {
	b := encodeLogHeader(cfg, 0)
	for _, r := range recs {
		b = appendRecord(b, r)
	}
	return b
}

func bufReader(r io.Reader) io.Reader { return bufio.NewReaderSize(r, 1<<16) }

// LogHeaderSize is the size of a log's header: its records start there.
const LogHeaderSize = logHeaderSize

// RecordSize is the size in a log of a record of n entries.
func RecordSize(n int) int64 { return recHeaderSize + recFixed + entrySize*int64(n) }

// AppendRecords appends the log encoding of recs to b (no header): what
// DecodeRecords reads.
func AppendRecords(b []byte, recs ...Record) []byte {
	for _, r := range recs {
		b = appendRecord(b, r)
	}
	return b
}

// EncodeLogHeader is the header of a log of p (its base included).
func EncodeLogHeader(p LogParams) []byte {
	return encodeLogHeader(Config{Quant: p.Quant, LR: p.LR, Clip: p.Clip, Seed: p.Seed}, p.Base)
}

// Params are the settings the log was written with, its base included.
func (l *Log) Params() LogParams { return l.p }

// Name is the log file's path.
func (l *Log) Name() string { return l.path }
