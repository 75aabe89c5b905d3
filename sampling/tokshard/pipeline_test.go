package tokshard_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/moetrain/moetrain/internal/testkit"
	"github.com/moetrain/moetrain/sampling/tokshard"
)

// mixedInputs writes a directory that exercises every decision of Prepare,
// with text files larger than the parallel path's chunks whose multi-byte
// runes, invalid bytes and NUL bytes fall at or near chunk boundaries.
func mixedInputs(t *testing.T, seed uint64) string {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 99))
	in := t.TempDir()
	write := func(name string, b []byte) { testkit.WriteFile(t, in, name, b) }
	runes := []string{"a", "b ", "\n", "é", "→", "😀", "z"}
	text := func(n int) []byte {
		var b []byte
		for len(b) < n {
			b = append(b, runes[r.IntN(len(runes))]...)
		}
		return b
	}
	const chunk = 256 << 10
	for i := 0; i < 6; i++ {
		write(fmt.Sprintf("big/utf8-%d.txt", i), text(chunk*(1+r.IntN(3))+r.IntN(chunk)))
	}
	bad := text(3*chunk + 17)
	bad[2*chunk+1] = 0xff // one invalid byte past two chunks
	write("big/late-invalid.txt", bad)
	bad = text(2*chunk + 5)
	bad[chunk] = 0xe2 // a truncated rune right at the first cut
	bad[chunk+1] = 'x'
	write("big/boundary-invalid.txt", bad)
	nul := text(3 * chunk)
	nul[chunk+7] = 0xfe
	nul[2*chunk+3] = 0
	write("big/late-nul.txt", nul)
	garbage := make([]byte, 2*chunk)
	for i := range garbage {
		garbage[i] = byte(0x80 + r.IntN(64)) // continuation bytes only
	}
	write("big/garbage.txt", garbage)
	write("small/a.txt", []byte("hello — world\n"))
	write("small/empty.txt", nil)
	write("small/latin1.txt", []byte("caf\xe9 cr\xe8me"))
	write("small/elf.bin", []byte{0x7f, 'E', 'L', 'F', 0, 1})
	write(".hidden/x.txt", []byte("hidden"))
	os.Symlink(filepath.Join(in, "small/a.txt"), filepath.Join(in, "small/link.txt"))

	var recs bytes.Buffer
	for i := 0; i < 3000; i++ {
		switch r.IntN(10) {
		case 0:
			recs.WriteString("not json\n")
		case 1:
			recs.WriteString(`{"text":""}` + "\n")
		case 2:
			recs.WriteString(`{"other":"x"}` + "\n")
		case 3:
			recs.WriteString("\n")
		default:
			b, _ := json.Marshal(map[string]string{"text": string(text(r.IntN(2000)))})
			recs.Write(append(b, '\n'))
		}
	}
	write("j/plain.jsonl", recs.Bytes())
	var gz bytes.Buffer
	gw := gzip.NewWriter(&gz)
	gw.Write(recs.Bytes())
	gw.Close()
	write("j/recs.jsonl.gz", gz.Bytes())
	var zs bytes.Buffer
	zw, _ := zstd.NewWriter(&zs)
	zw.Write(recs.Bytes())
	zw.Close()
	write("j/recs.jsonl.zst", zs.Bytes())
	write("j/cut.jsonl.zst", zs.Bytes()[:zs.Len()*2/3]) // damaged part-way
	write("j/notzstd.jsonl.zst", []byte("plain text, not zstd"))
	write("j/none.jsonl", []byte(`{"text":""}`+"\n\n"))
	return in
}

func summaryOf(t *testing.T, dir string) tokshard.Summary {
	t.Helper()
	var s tokshard.Summary
	b, err := os.ReadFile(filepath.Join(dir, tokshard.SummaryFile))
	if err != nil || json.Unmarshal(b, &s) != nil {
		t.Fatalf("summary: %v", err)
	}
	s.Out, s.Seconds, s.MBPerSecond = "", 0, 0
	return s
}

// The parallel path writes the serial path's dataset byte for byte and the
// same summary (timings aside), for any number of workers.
func TestPrepareParallelMatchesSerial(t *testing.T) {
	for seed := uint64(1); seed <= 2; seed++ {
		in := mixedInputs(t, seed)
		opts := func(out string, workers int) tokshard.PrepareOptions {
			return tokshard.PrepareOptions{Data: in, Out: out, ShardTokens: 300000, Workers: workers}
		}
		serial := filepath.Join(t.TempDir(), "serial")
		if _, err := tokshard.Prepare(opts(serial, 1)); err != nil {
			t.Fatal(err)
		}
		want := summaryOf(t, serial)
		if want.SkippedFiles["binary"] < 3 || want.SkippedFiles["non-utf8"] < 2 || want.SkippedFiles["corrupt"] != 2 || want.SkippedFiles["no-records"] != 1 || want.Shards < 3 {
			t.Fatalf("fixture does not exercise the skips: %v, %d shards", want.SkippedFiles, want.Shards)
		}
		for _, workers := range []int{2, 3, 8} {
			par := filepath.Join(t.TempDir(), "par")
			if _, err := tokshard.Prepare(opts(par, workers)); err != nil {
				t.Fatal(err)
			}
			got := summaryOf(t, par)
			gj, _ := json.Marshal(got)
			wj, _ := json.Marshal(want)
			if !bytes.Equal(gj, wj) {
				t.Fatalf("seed %d, %d workers: summaries differ: %d files seen, %d ingested, %d docs, %d tokens, %d bytes, skipped %v %v; want %d, %d, %d, %d, %d, %v %v",
					seed, workers, got.FilesSeen, got.FilesIngested, got.Docs, got.Tokens, got.BytesRead, got.SkippedFiles, got.SkippedRecords,
					want.FilesSeen, want.FilesIngested, want.Docs, want.Tokens, want.BytesRead, want.SkippedFiles, want.SkippedRecords)
			}
			sameDirs(t, fmt.Sprintf("seed %d, %d workers", seed, workers), par, serial)
		}
	}
}

// A single text file and a single JSONL file (not directories) give the
// serial path's dataset too.
func TestPrepareParallelSingleFile(t *testing.T) {
	dir := t.TempDir()
	txt := filepath.Join(dir, "one.txt")
	os.WriteFile(txt, []byte(strings.Repeat("token — ", 200000)), 0o644)
	var recs bytes.Buffer
	for i := 0; i < 2000; i++ {
		fmt.Fprintf(&recs, `{"text":"record %d %s"}`+"\n", i, strings.Repeat("x", i%300))
	}
	var gz bytes.Buffer
	gw := gzip.NewWriter(&gz)
	gw.Write(recs.Bytes())
	gw.Close()
	js := filepath.Join(dir, "recs.jsonl.gz")
	os.WriteFile(js, gz.Bytes(), 0o644)
	for _, in := range []string{txt, js} {
		a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
		if _, err := tokshard.Prepare(tokshard.PrepareOptions{Data: in, Out: a, Workers: 1}); err != nil {
			t.Fatal(err)
		}
		if _, err := tokshard.Prepare(tokshard.PrepareOptions{Data: in, Out: b, Workers: 4}); err != nil {
			t.Fatal(err)
		}
		if sa, sb := summaryOf(t, a), summaryOf(t, b); sa.Tokens != sb.Tokens || sa.Docs != sb.Docs || sa.Tokens == 0 {
			t.Fatalf("%s: %d tokens in %d documents vs %d in %d", in, sa.Tokens, sa.Docs, sb.Tokens, sb.Docs)
		}
		sameDirs(t, in, b, a)
	}
}

// BenchmarkPrepare prepares 64 MB of text files and JSONL (serial and all
// cores); MB/s is input bytes per wall second.
func BenchmarkPrepare(b *testing.B) {
	in := b.TempDir()
	r := rand.New(rand.NewPCG(1, 1))
	words := strings.Fields("func return if else for range var const type struct map chan go defer select case default — é")
	var total int64
	for i := 0; total < 64<<20; i++ {
		var sb strings.Builder
		for sb.Len() < 200<<10 {
			sb.WriteString(words[r.IntN(len(words))])
			sb.WriteByte(" \n"[r.IntN(2)])
		}
		name := fmt.Sprintf("f%04d.txt", i)
		data := []byte(sb.String())
		if i%10 == 9 {
			var j bytes.Buffer
			for k := 0; k < len(data); k += 4000 {
				rec, _ := json.Marshal(map[string]string{"text": string(data[k:min(k+4000, len(data))])})
				j.Write(append(rec, '\n'))
			}
			name, data = fmt.Sprintf("f%04d.jsonl", i), j.Bytes()
		}
		os.WriteFile(filepath.Join(in, name), data, 0o644)
		total += int64(len(data))
	}
	for _, workers := range []int{1, 0} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			b.SetBytes(total)
			for i := 0; i < b.N; i++ {
				out := filepath.Join(b.TempDir(), "out")
				if _, err := tokshard.Prepare(tokshard.PrepareOptions{Data: in, Out: out, Workers: workers}); err != nil {
					b.Fatal(err)
				}
				os.RemoveAll(out)
			}
		})
	}
}

func TestPrepareRejectsNegativeWorkers(t *testing.T) {
	in := filepath.Join(t.TempDir(), "a.txt")
	os.WriteFile(in, []byte("text"), 0o644)
	if _, err := tokshard.Prepare(tokshard.PrepareOptions{Data: in, Out: t.TempDir(), Workers: -1}); err == nil || !strings.Contains(err.Error(), "workers") {
		t.Errorf("Workers -1: %v, want an error naming workers", err)
	}
}

// tinyVocab is a tokenizer whose ids overflow its vocabulary: a bad
// tokenizer must fail Prepare with an error, not hang or commit a dataset.
type tinyVocab struct{ tokshard.ByteTokenizer }

func (tinyVocab) Vocab() int { return 10 }

func TestPrepareParallelStopsOnError(t *testing.T) {
	in := mixedInputs(t, 3)
	before := runtime.NumGoroutine()
	for _, workers := range []int{1, 3} {
		out := filepath.Join(t.TempDir(), "out")
		_, err := tokshard.Prepare(tokshard.PrepareOptions{Data: in, Out: out, Workers: workers, Tokenizer: tinyVocab{}})
		if err == nil || !strings.Contains(err.Error(), "outside the vocabulary") {
			t.Fatalf("%d workers: %v, want a vocabulary error", workers, err)
		}
		if _, err := os.Stat(filepath.Join(out, tokshard.IndexFile)); err == nil {
			t.Fatalf("%d workers: a failed prepare committed an index", workers)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Fatalf("%d goroutines left running (%d before)", n, before)
	}
}
