package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/moetrain/moetrain/spsa"
)

// spsaLogKeeper is the coordinator's SPSA log: the authority a joining
// worker catches up from (docs/algorithms/spsa.md#where-the-log-lives). It
// is SPSALogName in the run directory, in spsa/log.go's format and with its
// durability: created atomically, every append fsync'd before it is
// acknowledged, a torn tail cut when a restarted coordinator opens it.
// Safe for concurrent use.
type spsaLogKeeper struct {
	path string
	cfg  spsa.Config

	mu   sync.Mutex
	log  *spsa.Log // nil until rank 0's first append creates it
	offs []int64   // byte offset of each step's record; len(offs) = the next step
	size int64     // the log's bytes, all intact and fsync'd
}

// SPSALogChunk bounds one SPSALog message.
const SPSALogChunk = 1 << 20

// errSPSANoLog: the coordinator holds no log yet (no step was applied).
var errSPSANoLog = errors.New("the coordinator holds no SPSA log yet")

// spsaRangeError is a read from a step outside the log.
type spsaRangeError struct{ From, Next int64 }

func (e *spsaRangeError) Error() string {
	held := "no step"
	if e.Next > 0 {
		held = fmt.Sprintf("steps 0 to %d", e.Next-1)
	}
	if e.From < 0 {
		return fmt.Sprintf("spsa log: step %d is negative; the coordinator's log holds %s", e.From, held)
	}
	return fmt.Sprintf("spsa log: step %d is past the end of the coordinator's log, which holds %s", e.From, held)
}

// spsaInputError is a request whose records cannot be read.
type spsaInputError struct{ err error }

func (e *spsaInputError) Error() string { return e.err.Error() }
func (e *spsaInputError) Unwrap() error { return e.err }

// openSPSALogKeeper opens the log in dir, or prepares to create it there on
// the first append. A log that is damaged other than by a torn last append,
// written with other settings than cfg's, or not starting at step 0 is an
// error naming the file and the byte.
func openSPSALogKeeper(dir string, cfg spsa.Config) (*spsaLogKeeper, error) {
	k := &spsaLogKeeper{path: filepath.Join(dir, SPSALogName), cfg: cfg}
	if _, err := os.Lstat(k.path); errors.Is(err, os.ErrNotExist) {
		return k, nil
	}
	l, recs, err := spsa.OpenLog(k.path, cfg)
	if err != nil {
		return nil, fmt.Errorf("the coordinator's %w", err)
	}
	if len(recs) > 0 && recs[0].Step != 0 {
		l.Close()
		return nil, fmt.Errorf("the coordinator's spsa log %s: %w: the first record is step %d, want 0 (the log starts at spsa.init_from)",
			k.path, spsa.ErrCorruptLog, recs[0].Step)
	}
	k.log, k.size = l, spsa.LogHeaderSize
	for _, r := range recs {
		k.offs = append(k.offs, k.size)
		k.size += spsa.RecordSize(len(r.Entries))
	}
	return k, nil
}

// next is the step the log expects next (the steps it holds).
func (k *spsaLogKeeper) next() int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	return int64(len(k.offs))
}

// append appends the records encoded in data (consecutive, the log's
// record layout) to a log starting from parameters with checksum base,
// creating it on the first call. Records it holds already are accepted
// and skipped when they are byte for byte the same (a retry). It returns the next step and the last record's step.
func (k *spsaLogKeeper) append(base uint32, data []byte) (next, last int64, err error) {
	recs, err := spsa.DecodeRecords(bytes.NewReader(data), 0)
	if err != nil {
		return 0, 0, &spsaInputError{fmt.Errorf("spsa append: the records sent: %w", err)}
	}
	if len(recs) == 0 {
		return 0, 0, &spsaInputError{fmt.Errorf("spsa append: no records")}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.log == nil {
		if recs[0].Step != 0 {
			return 0, 0, fmt.Errorf("spsa append: the coordinator's log %s is empty, the first record is for step %d", k.path, recs[0].Step)
		}
		if k.log, err = spsa.CreateLogFrom(k.path, k.cfg, base); err != nil {
			return 0, 0, fmt.Errorf("spsa append: %w", err)
		}
		k.size = spsa.LogHeaderSize
	} else if b := k.log.Params().Base; b != base {
		return 0, 0, fmt.Errorf("spsa append: the coordinator's log %s starts from parameters with checksum %08x, the records from %08x", k.path, b, base)
	}
	n := int64(len(k.offs)) // records held
	var fresh []spsa.Record
	var sizes []int64
	for _, r := range recs {
		enc := spsa.AppendRecords(nil, r)
		if r.Step >= 0 && r.Step < n { // a retry of an append whose answer was lost?
			held, err := k.recordBytes(r.Step)
			if err != nil {
				return n, n - 1, err
			}
			if bytes.Equal(enc, held) {
				continue
			}
			return n, n - 1, fmt.Errorf("spsa append: a record for step %d differs from the one the coordinator's log %s holds (it expects step %d)", r.Step, k.path, n)
		}
		if want := n + int64(len(fresh)); r.Step != want {
			return n, n - 1, fmt.Errorf("spsa append: a record for step %d, the coordinator's log %s expects step %d", r.Step, k.path, want)
		}
		fresh, sizes = append(fresh, r), append(sizes, int64(len(enc)))
	}
	// One write and one fsync for the whole batch (a hand-over of a long
	// log is one call per 1 MiB of records).
	if err := k.log.Append(fresh...); err != nil {
		return n, n - 1, fmt.Errorf("spsa append: %w", err)
	}
	for _, size := range sizes {
		k.offs = append(k.offs, k.size)
		k.size += size
	}
	return int64(len(k.offs)), recs[len(recs)-1].Step, nil
}

// recordBytes reads the record of step (< len(k.offs)) from the file;
// k.mu is held.
func (k *spsaLogKeeper) recordBytes(step int64) ([]byte, error) {
	end := k.size
	if step+1 < int64(len(k.offs)) {
		end = k.offs[step+1]
	}
	f, err := os.Open(k.path)
	if err != nil {
		return nil, fmt.Errorf("spsa log: %w", err)
	}
	defer f.Close()
	b := make([]byte, end-k.offs[step])
	if _, err := f.ReadAt(b, k.offs[step]); err != nil {
		return nil, fmt.Errorf("spsa log %s: step %d: %w", k.path, step, err)
	}
	return b, nil
}

// read sends the log's header and then its records from step from to the
// end, in chunks of at most SPSALogChunk bytes (next: the step after the
// last record sent). A log not created yet is errSPSANoLog, a step past
// the end a *spsaRangeError.
func (k *spsaLogKeeper) read(from int64, send func(data []byte, next int64) error) error {
	k.mu.Lock()
	created, next, size := k.log != nil, int64(len(k.offs)), k.size
	var off int64
	if from >= 0 && from < next {
		off = k.offs[from]
	}
	k.mu.Unlock()
	switch {
	case !created && from == 0:
		return errSPSANoLog
	case from < 0 || from > next:
		return &spsaRangeError{From: from, Next: next}
	case from == next:
		off = size
	}
	// Bytes before size are intact and fsync'd and never rewritten while
	// the coordinator runs (a torn tail is cut only when it opens the log).
	f, err := os.Open(k.path)
	if err != nil {
		return fmt.Errorf("spsa log: %w", err)
	}
	defer f.Close()
	buf := make([]byte, min(SPSALogChunk, spsa.LogHeaderSize+size-off))
	if _, err := io.ReadFull(f, buf[:spsa.LogHeaderSize]); err != nil {
		return fmt.Errorf("spsa log %s: header: %w", k.path, err)
	}
	fill := spsa.LogHeaderSize
	for {
		n := min(int64(len(buf)-fill), size-off)
		if n > 0 {
			if _, err := f.ReadAt(buf[fill:fill+int(n)], off); err != nil {
				return fmt.Errorf("spsa log %s: bytes %d to %d: %w", k.path, off, off+n, err)
			}
		}
		off += n
		if off == size {
			return send(buf[:fill+int(n)], next)
		}
		if err := send(buf[:fill+int(n)], -1); err != nil {
			return err
		}
		fill = 0
	}
}

// Close closes the log file.
func (k *spsaLogKeeper) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.log == nil {
		return nil
	}
	return k.log.Close()
}

// SPSALogName is the SPSA log's file name in the checkpoint directory when
// spsa.log is not set.
const SPSALogName = "spsa.log"
