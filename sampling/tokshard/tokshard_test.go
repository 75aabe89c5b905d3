package tokshard_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/moetrain/moetrain/internal/testkit"
	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/sampling/tokshard"
)

func randDocs(r *rand.Rand, n, vocab int) [][]int32 {
	docs := make([][]int32, n)
	for i := range docs {
		d := make([]int32, r.IntN(300))
		for j := range d {
			d[j] = int32(r.IntN(vocab))
		}
		docs[i] = d
	}
	return docs
}

func writeDocs(t *testing.T, dir string, vocab int, docs [][]int32) {
	t.Helper()
	testkit.WritePrepared(t, dir, tokshard.WriterOptions{Vocab: vocab, ShardTokens: 5000, ChunkBytes: 1024}, docs)
}

// create is tokshard.Create, failing the test on an error.
func create(tb testing.TB, dir string, o tokshard.WriterOptions) *tokshard.Writer {
	tb.Helper()
	w, err := tokshard.Create(dir, o)
	if err != nil {
		tb.Fatal(err)
	}
	return w
}

func TestRoundTrip(t *testing.T) {
	for _, vocab := range []int{256, 1 << 16, 1<<16 + 1, 100000} {
		r := rand.New(rand.NewPCG(1, uint64(vocab)))
		docs := randDocs(r, 200, vocab)
		dir := t.TempDir()
		writeDocs(t, dir, vocab, docs)
		d, err := tokshard.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		if d.Index.NumShards() < 2 {
			t.Errorf("vocab %d: %d shards, want several", vocab, d.Index.NumShards())
		}
		if w := tokshard.WidthFor(vocab); d.Index.Width != w {
			t.Errorf("width %d, want %d", d.Index.Width, w)
		}
		if err := d.Verify(); err != nil {
			t.Fatal(err)
		}
		if d.NumDocs() != len(docs) {
			t.Fatalf("%d docs, want %d", d.NumDocs(), len(docs))
		}
		for i, want := range docs {
			tk, err := d.Doc(i)
			if err != nil {
				t.Fatal(err)
			}
			if d.DocLen(i) != len(want) || tk.Len() != len(want) {
				t.Fatalf("doc %d: len %d/%d, want %d", i, d.DocLen(i), tk.Len(), len(want))
			}
			got := tk.AppendInt32(nil)
			for j := range want {
				if got[j] != want[j] || tk.At(j) != want[j] {
					t.Fatalf("vocab %d doc %d token %d: %d, want %d", vocab, i, j, got[j], want[j])
				}
			}
		}
		if _, err := d.Doc(len(docs)); err == nil {
			t.Error("out-of-range doc: no error")
		}
		d.Close()
	}
}

func TestTokenOutsideVocab(t *testing.T) {
	w := create(t, t.TempDir(), tokshard.WriterOptions{Vocab: 256})
	if err := w.WriteDoc([]int32{1, 256}); err == nil {
		t.Fatal("token 256 with vocab 256 accepted")
	}
	if err := w.Close(); err == nil {
		t.Fatal("Close after a failed write succeeded")
	}
}

func TestChecksumCorruption(t *testing.T) {
	dir := t.TempDir()
	writeDocs(t, dir, 256, randDocs(rand.New(rand.NewPCG(2, 2)), 100, 256))
	p := filepath.Join(dir, tokshard.ShardName(1))
	b, _ := os.ReadFile(p)
	b[64+1500] ^= 0x40 // chunk 1 of shard 1 (1024-byte chunks)
	os.WriteFile(p, b, 0o644)
	d, err := tokshard.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	err = d.Verify()
	if err == nil || !strings.Contains(err.Error(), tokshard.ShardName(1)) || !strings.Contains(err.Error(), "bytes 1088..2112") {
		t.Fatalf("Verify = %v, want a checksum error naming %s bytes 1088..2112", err, tokshard.ShardName(1))
	}

	// a damaged index is refused at Open, naming the file
	ip := filepath.Join(dir, tokshard.IndexFile)
	ib, _ := os.ReadFile(ip)
	ib[70] ^= 1
	os.WriteFile(ip, ib, 0o644)
	if _, err := tokshard.Open(dir); err == nil || !strings.Contains(err.Error(), "index.idx") || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("Open of a damaged index = %v", err)
	}
}

func TestTruncated(t *testing.T) {
	for _, name := range []string{tokshard.IndexFile, tokshard.ShardName(0)} {
		dir := t.TempDir()
		writeDocs(t, dir, 256, randDocs(rand.New(rand.NewPCG(3, 3)), 100, 256))
		p := filepath.Join(dir, name)
		st, _ := os.Stat(p)
		if err := os.Truncate(p, st.Size()-10); err != nil {
			t.Fatal(err)
		}
		_, err := tokshard.Open(dir)
		if err == nil || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "truncated") {
			t.Errorf("truncated %s: Open = %v", name, err)
		}
	}
}

func FuzzParseIndex(f *testing.F) {
	dir := f.TempDir()
	w, _ := tokshard.Create(dir, tokshard.WriterOptions{Vocab: 256, ShardTokens: 50, ChunkBytes: 16})
	for _, d := range randDocs(rand.New(rand.NewPCG(4, 4)), 10, 256) {
		w.WriteDoc(d[:min(len(d), 30)])
	}
	w.Close()
	good, _ := os.ReadFile(filepath.Join(dir, tokshard.IndexFile))
	f.Add(good)
	f.Add(good[:len(good)-1])
	f.Add([]byte("MTTOKIDX"))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseBounded(t, b)
		if len(b) >= 16 { // the same bytes with a valid checksum, to reach the checks behind it
			b = append([]byte(nil), b...)
			binary.LittleEndian.PutUint32(b[len(b)-16:], crc32.Checksum(b[:len(b)-16], crc32.MakeTable(crc32.Castagnoli)))
			parseBounded(t, b)
		}
	})
}

func parseBounded(t *testing.T, b []byte) {
	{
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		x, err := tokshard.ParseIndex(b)
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		if d := after.TotalAlloc - before.TotalAlloc; d > uint64(64*len(b)+1<<16) {
			t.Fatalf("ParseIndex allocated %d bytes for a %d-byte input", d, len(b))
		}
		if err != nil {
			return
		}
		for i := 0; i < int(x.Docs); i++ { // every entry of an accepted index is in range
			s, off, n := x.Doc(i)
			if s >= x.NumShards() || off+uint64(n) > x.ShardTokens(s) {
				t.Fatalf("accepted doc %d out of range", i)
			}
		}
	}
}

// The writer holds one chunk, not the document: writing a 4 MB document in
// 64 KB pieces allocates far less than the document.
func TestWriterStreamsBounded(t *testing.T) {
	w := create(t, t.TempDir(), tokshard.WriterOptions{Vocab: 256, ChunkBytes: 1 << 16})
	piece := make([]int32, 1<<16)
	for i := range piece {
		piece[i] = int32(i % 251)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	w.BeginDoc()
	for range 64 { // 4 Mi tokens = 8 MB at 2 bytes
		if err := w.Write(piece); err != nil {
			t.Fatal(err)
		}
	}
	w.EndDoc()
	runtime.ReadMemStats(&after)
	if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
		t.Fatalf("writing an 8 MB document allocated %d bytes, want under 1 MiB", d)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestPrepareDirectory(t *testing.T) {
	in := t.TempDir()
	write := func(name string, b []byte) { testkit.WriteFile(t, in, name, b) }
	write("a.txt", []byte("hello, world — ünïcode\n"))
	write("pkg/__init__.py", nil)
	write("pkg/mod.py", []byte("def f():\n    return 1\n"))
	write("blob.bin", []byte{0x7f, 'E', 'L', 'F', 0, 0, 1, 2})
	write("latin1.txt", []byte("caf\xe9 cr\xe8me br\xfbl\xe9e, plain ASCII otherwise and long enough"))
	write(".hidden", []byte("not read"))
	var zbuf bytes.Buffer
	zw, _ := zstd.NewWriter(&zbuf)
	zw.Write([]byte(`{"text":"first record"}` + "\n" + `{"text":""}` + "\n" + `not json` + "\n" + `{"text":"second record"}` + "\n"))
	zw.Close()
	write("recs.jsonl.zst", zbuf.Bytes())

	out := filepath.Join(t.TempDir(), "ds")
	var progress bytes.Buffer
	s, err := tokshard.Prepare(tokshard.PrepareOptions{Data: in, Out: out, Progress: &progress})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(s.Line())
	if s.FilesSeen != 6 || s.FilesIngested != 3 || s.Docs != 4 {
		t.Errorf("seen %d ingested %d docs %d, want 6, 3, 4", s.FilesSeen, s.FilesIngested, s.Docs)
	}
	want := map[string]string{"pkg/__init__.py": "empty", "blob.bin": "binary", "latin1.txt": "non-utf8", "recs.jsonl.zst:2": "empty-record", "recs.jsonl.zst:3": "bad-json"}
	for _, sk := range s.Skipped {
		rel, _ := filepath.Rel(in, sk.Path)
		if want[rel] != sk.Reason {
			t.Errorf("skipped %s: %s, want %q", rel, sk.Reason, want[rel])
		}
		delete(want, rel)
	}
	if len(want) != 0 {
		t.Errorf("not reported as skipped: %v", want)
	}
	if s.SkippedFiles["empty"] != 1 || s.SkippedFiles["binary"] != 1 || s.SkippedFiles["non-utf8"] != 1 {
		t.Errorf("skipped counts %v", s.SkippedFiles)
	}
	line := s.Line()
	for _, r := range []string{"1 binary", "1 empty", "1 non-utf8", "1 bad-json", "1 empty-record"} {
		if !strings.Contains(line, r) {
			t.Errorf("summary line %q lacks %q", line, r)
		}
	}
	var js tokshard.Summary
	b, err := os.ReadFile(filepath.Join(out, tokshard.SummaryFile))
	if err != nil || json.Unmarshal(b, &js) != nil || js.Docs != 4 || len(js.Skipped) != 5 {
		t.Fatalf("summary JSON: %v %s", err, b)
	}

	d, err := tokshard.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Verify(); err != nil {
		t.Fatal(err)
	}
	// sorted walk: a.txt, pkg/mod.py, recs.jsonl.zst (2 records)
	texts := []string{"hello, world — ünïcode\n", "def f():\n    return 1\n", "first record", "second record"}
	for i, txt := range texts {
		tk, _ := d.Doc(i)
		if got := string(sampling.ByteDetokenize(tk.AppendInt32(nil))); got != txt {
			t.Errorf("doc %d = %q, want %q", i, got, txt)
		}
		if !slices.Equal(tk.AppendInt32(nil), sampling.ByteTokenize([]byte(txt))) {
			t.Errorf("doc %d: tokens differ from sampling.ByteTokenize", i)
		}
	}
	if _, err := tokshard.Prepare(tokshard.PrepareOptions{Data: in, Out: out}); err == nil {
		t.Error("Prepare into an existing dataset succeeded")
	}
}

// A text file larger than the read buffer, with multi-byte runes across
// buffer boundaries, is classified UTF-8 and streamed whole.
func TestPrepareLargeText(t *testing.T) {
	in := filepath.Join(t.TempDir(), "big.txt")
	text := []byte(strings.Repeat("αβγ δ — text ", 300000)) // ~4.5 MB
	os.WriteFile(in, text, 0o644)
	out := t.TempDir()
	s, err := tokshard.Prepare(tokshard.PrepareOptions{Data: in, Out: out, ShardTokens: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if s.Docs != 1 || s.Tokens != uint64(len(text)) {
		t.Fatalf("docs %d tokens %d, want 1, %d", s.Docs, s.Tokens, len(text))
	}
	d, err := tokshard.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	tk, _ := d.Doc(0)
	if !bytes.Equal(sampling.ByteDetokenize(tk.AppendInt32(nil)), text) {
		t.Fatal("round trip differs")
	}
}
