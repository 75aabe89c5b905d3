package spsa

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func testRecords(from, n int64) []Record {
	var recs []Record
	for s := from; s < from+n; s++ {
		recs = append(recs, Record{Step: s, Entries: []Entry{{1, 0, uint32(s % 251)}, {2, 0, 7}, {2, 1, 255}}})
	}
	return recs
}

func TestLogRoundTripAndAppend(t *testing.T) {
	cfg := DefaultConfig()
	path := filepath.Join(t.TempDir(), "spsa.log")
	l, err := CreateLog(path, cfg)
	if err != nil {
		t.Fatal(err)
	}
	recs := testRecords(10, 5)
	for _, r := range recs {
		if err := l.Append(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Append(Record{Step: 99}); err == nil || !strings.Contains(err.Error(), "want step 15") {
		t.Fatalf("out-of-sequence append: %v", err)
	}
	if err := l.Append(Record{Step: 15, Entries: []Entry{{2, 0, 1}, {1, 0, 1}}}); err == nil {
		t.Fatal("unsorted entries appended")
	}
	l.Close()
	if _, err := CreateLog(path, cfg); err == nil {
		t.Fatal("CreateLog over an existing log succeeded")
	}
	p, got, err := ReadLog(path)
	if err != nil || p != cfg.Params() || !reflect.DeepEqual(got, recs) {
		t.Fatalf("ReadLog: %+v %v %v", p, got, err)
	}
	raw, _ := os.ReadFile(path)
	if !bytes.Equal(raw, EncodeLog(cfg, recs)) {
		t.Fatal("file differs from EncodeLog of its records")
	}
	// Reopen and continue.
	l, got, err = OpenLog(path, cfg)
	if err != nil || len(got) != 5 {
		t.Fatalf("OpenLog: %d records, %v", len(got), err)
	}
	if err := l.Append(testRecords(15, 1)[0]); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, got, err = ReadLog(path); err != nil || len(got) != 6 || got[5].Step != 15 {
		t.Fatalf("after reopen: %d records, %v", len(got), err)
	}
	// Another job's settings are refused.
	other := cfg
	other.LR *= 2
	if _, _, err := OpenLog(path, other); err == nil || !strings.Contains(err.Error(), "written with") {
		t.Fatalf("OpenLog with another lr: %v", err)
	}
}

// A crash mid-append leaves a torn last record: OpenLog cuts it and the
// log goes on; damage before the end is refused.
func TestLogTornTailAndCorruption(t *testing.T) {
	cfg := DefaultConfig()
	full := EncodeLog(cfg, testRecords(0, 4))
	good := EncodeLog(cfg, testRecords(0, 3))
	for cut := len(good) + 1; cut < len(full); cut++ {
		path := filepath.Join(t.TempDir(), "l")
		os.WriteFile(path, full[:cut], 0o644)
		_, _, err := ReadLog(path)
		var torn *TornTailError
		if !errors.As(err, &torn) || torn.Offset != int64(len(good)) {
			t.Fatalf("cut at %d: %v, want a torn tail at %d", cut, err, len(good))
		}
		l, recs, err := OpenLog(path, cfg)
		if err != nil || len(recs) != 3 {
			t.Fatalf("cut at %d: OpenLog: %d records, %v", cut, len(recs), err)
		}
		if err := l.Append(testRecords(3, 1)[0]); err != nil {
			t.Fatal(err)
		}
		l.Close()
		if b, _ := os.ReadFile(path); !bytes.Equal(b, full) {
			t.Fatalf("cut at %d: log after repair and append differs from the intact log", cut)
		}
	}
	// A flipped bit in the last record: torn. In an earlier one: corrupt.
	last := append([]byte(nil), full...)
	last[len(last)-1] ^= 1
	if _, _, err := DecodeLog(bytes.NewReader(last)); !errors.As(err, new(*TornTailError)) {
		t.Fatalf("damaged last record: %v", err)
	}
	mid := append([]byte(nil), full...)
	mid[logHeaderSize+recHeaderSize+3] ^= 1
	if _, recs, err := DecodeLog(bytes.NewReader(mid)); !errors.Is(err, ErrCorruptLog) || len(recs) != 0 || !strings.Contains(err.Error(), "byte 44") {
		t.Fatalf("damaged first record: %d records, %v", len(recs), err)
	}
	hdr := append([]byte(nil), full...)
	hdr[20] ^= 1
	if _, _, err := DecodeLog(bytes.NewReader(hdr)); !errors.Is(err, ErrCorruptLog) {
		t.Fatalf("damaged header: %v", err)
	}
	gap := EncodeLog(cfg, append(testRecords(0, 2), testRecords(5, 1)...))
	if _, _, err := DecodeLog(bytes.NewReader(gap)); !errors.Is(err, ErrCorruptLog) || !strings.Contains(err.Error(), "step 5 follows step 1") {
		t.Fatalf("gap in steps: %v", err)
	}
}

// FuzzDecodeLog: any bytes give records or an error, never a panic, and
// what decodes cleanly re-encodes to the same bytes.
func FuzzDecodeLog(f *testing.F) {
	cfg := DefaultConfig()
	f.Add(EncodeLog(cfg, testRecords(0, 3)))
	f.Add(EncodeLog(cfg, nil))
	fp := cfg
	fp.Quant = QuantFP32
	f.Add(EncodeLog(fp, testRecords(7, 2))[:60])
	f.Add([]byte("MTSPSA01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, recs, err := DecodeLog(bytes.NewReader(b))
		if err != nil {
			if !errors.Is(err, ErrCorruptLog) && !errors.As(err, new(*TornTailError)) {
				t.Fatalf("error of unexpected kind: %v", err)
			}
			return
		}
		c := Config{Quant: p.Quant, LR: p.LR, Clip: p.Clip, Seed: p.Seed}
		if re := EncodeLog(c, recs); !bytes.Equal(re, b) {
			t.Fatalf("re-encoding differs: %d bytes from %d", len(re), len(b))
		}
	})
}

// The header records the checksum of the parameters the log starts from;
// reopening keeps it, and the settings comparison ignores it.
func TestLogBase(t *testing.T) {
	cfg := DefaultConfig()
	path := filepath.Join(t.TempDir(), "spsa.log")
	l, err := CreateLogFrom(path, cfg, 0xdeadbeef)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Append(testRecords(0, 1)[0]); err != nil {
		t.Fatal(err)
	}
	l.Close()
	p, recs, err := ReadLog(path)
	if err != nil || p.Base != 0xdeadbeef || len(recs) != 1 {
		t.Fatalf("ReadLog: %+v, %d records, %v", p, len(recs), err)
	}
	if p.Base = 0; p != cfg.Params() {
		t.Fatalf("settings %+v, want %+v", p, cfg.Params())
	}
	l, _, err = OpenLog(path, cfg)
	if err != nil || l.Params().Base != 0xdeadbeef {
		t.Fatalf("OpenLog: %v", err)
	}
	l.Close()
	raw, _ := os.ReadFile(path)
	if bytes.Equal(raw[:logHeaderSize], EncodeLog(cfg, nil)) {
		t.Fatal("the base is not in the header")
	}
}

// Append takes a batch in one write: read back it is the records in
// order; a batch with a gap writes nothing and leaves the log expecting the
// same step.
func TestLogAppendBatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spsa.log")
	l, err := CreateLog(path, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	recs := testRecords(0, 5)
	if err := l.Append(recs...); err != nil {
		t.Fatal(err)
	}
	gap := append(testRecords(5, 2), testRecords(8, 1)...)
	if err := l.Append(gap...); err == nil || !strings.Contains(err.Error(), "want step 7") {
		t.Fatalf("a batch with a gap: %v, want a refusal naming step 7", err)
	}
	if err := l.Append(testRecords(5, 1)...); err != nil {
		t.Fatalf("after a refused batch the log should take step 5: %v", err)
	}
	_, got, err := ReadLog(path)
	if err != nil || !reflect.DeepEqual(got, testRecords(0, 6)) {
		t.Fatalf("read back %d records (%v), want steps 0-5", len(got), err)
	}
}
