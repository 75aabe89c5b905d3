package sampling

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/moetrain/moetrain/internal/testkit"
	"github.com/moetrain/moetrain/sampling/tokshard"
)

// preparedDocs writes docs as a prepared dataset (small shards and chunks so
// documents and windows cross shard boundaries) and returns its directory.
func preparedDocs(t testing.TB, docs [][]int32, vocab int) string {
	return writePrepared(t, docs, vocab, 3000)
}

func writePrepared(t testing.TB, docs [][]int32, vocab int, shardTokens int64) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "prepared")
	testkit.WritePrepared(t, dir, tokshard.WriterOptions{Vocab: vocab, ShardTokens: shardTokens, ChunkBytes: 256}, docs)
	return dir
}

func randomDocs(r *rand.Rand, n, maxLen, vocab int) [][]int32 {
	docs := make([][]int32, n)
	for i := range docs {
		d := make([]int32, r.IntN(maxLen+1)) // includes 0- and 1-token documents
		for j := range d {
			d[j] = int32(r.IntN(vocab))
		}
		docs[i] = d
	}
	return docs
}

// materialise reads every document of a source into memory: the naive
// reference the memory-mapped sources are compared with.
func materialise(src docSource) memDocs {
	out := make(memDocs, src.numDocs())
	for i := range out {
		out[i] = Document{Name: fmt.Sprint(i), Tokens: src.appendTokens(nil, i, 0, src.docLen(i))}
	}
	return out
}

// preparedAndMemory builds the dataset of src (read in place) and of its
// documents copied into memory, with the same max_len and too-long policy.
func preparedAndMemory(t *testing.T, src docSource, maxLen int, tooLong string) (prepared, memory *Dataset) {
	t.Helper()
	prepared, err := newDataset("prepared", src, maxLen, tooLong)
	if err != nil {
		t.Fatal(err)
	}
	memory, err = newDataset("memory", materialise(src), maxLen, tooLong)
	if err != nil {
		t.Fatal(err)
	}
	return prepared, memory
}

func tokensOf(src docSource) []int32 {
	var out []int32
	for i := 0; i < src.numDocs(); i++ {
		out = src.appendTokens(out, i, 0, src.docLen(i))
	}
	return out
}

// The splits partition the data: window blocks cover the concatenated
// documents exactly once with round(frac × blocks) held out; document spans
// cover every document's tokens exactly once, in order.
func TestPreparedSplits(t *testing.T) {
	for seed := uint64(0); seed < 12; seed++ {
		r := rand.New(rand.NewPCG(seed, 1))
		vocab := []int{256, 70000}[seed%2]
		docs := randomDocs(r, 1+r.IntN(200), []int{3, 40, 900}[seed%3], vocab)
		if seed%4 == 1 { // one long document: the held-out part is its tail
			docs = [][]int32{randomDocs(r, 1, 5000, vocab)[0]}
			docs[0] = append(docs[0], 1, 2, 3, 4, 5)
		}
		var all []int32
		for _, d := range docs {
			all = append(all, d...)
		}
		if len(all) < 8 {
			continue
		}
		dir := preparedDocs(t, docs, vocab)
		frac := []float64{0, 0.05, 0.3}[seed%3]
		p, err := OpenPrepared(dir, ModeWindow, frac, seed)
		if err != nil {
			t.Fatal(err)
		}
		train, val := p.train.(*blocks), p.val.(*blocks)
		nb := train.numDocs() + val.numDocs()
		if frac > 0 && nb >= 2 && (val.numDocs() == 0 || train.numDocs() == 0) {
			t.Errorf("seed %d: %d train, %d validation blocks", seed, train.numDocs(), val.numDocs())
		}
		// merge the blocks back by offset: the concatenation is all tokens
		got := make([]int32, len(all))
		covered := 0
		for _, b := range []*blocks{train, val} {
			for i := range b.a {
				copy(got[b.a[i]:], b.appendTokens(nil, i, 0, b.docLen(i)))
				covered += b.docLen(i)
			}
		}
		if covered != len(all) || !slices.Equal(got, all) {
			t.Fatalf("seed %d: blocks cover %d of %d tokens or differ", seed, covered, len(all))
		}
		p.Close()

		p, err = OpenPrepared(dir, ModePack, frac, seed)
		if err != nil {
			t.Fatal(err)
		}
		ts, vs := p.train.(*spans), p.val.(*spans)
		per := make([][]int32, len(docs))
		for _, s := range []*spans{ts, vs} {
			for i, sp := range s.s {
				if int(sp.off) != len(per[sp.doc]) {
					t.Fatalf("seed %d: document %d part at %d, want %d", seed, sp.doc, sp.off, len(per[sp.doc]))
				}
				per[sp.doc] = s.appendTokens(per[sp.doc], i, 0, s.docLen(i))
			}
		}
		for i := range docs {
			if !slices.Equal(per[i], docs[i]) {
				t.Fatalf("seed %d: document %d reassembled differs", seed, i)
			}
		}
		if frac > 0 && len(vs.s) == 0 {
			t.Errorf("seed %d: nothing held out", seed)
		}
		p.Close()
	}
}

// Samplers over a memory-mapped prepared dataset yield exactly the batches
// the same samplers yield over the same documents held in memory, on every
// DP rank, for window, pack and bucket modes and their validation batches.
func TestPreparedSamplersMatchMemory(t *testing.T) {
	for seed := uint64(0); seed < 6; seed++ {
		r := rand.New(rand.NewPCG(seed, 2))
		vocab := []int{256, 70000}[seed%2]
		docs := randomDocs(r, 300, 200, vocab)
		dir := preparedDocs(t, docs, vocab)
		for _, mode := range []string{ModeWindow, ModePack, ModeBucket} {
			cfg := DefaultConfig()
			cfg.Path, cfg.Mode, cfg.SeqLen, cfg.BatchSize, cfg.Buckets = dir, mode, 32, 3, 8
			d, err := Open(cfg, seed)
			if err != nil {
				t.Fatal(err)
			}
			if d.Prepared == nil || d.Corpus != nil {
				t.Fatalf("%s: prepared directory not detected", mode)
			}
			// the reference: the same split, read into memory
			ref := &Data{Config: d.Config, Seed: d.Seed, Corpus: &Corpus{Name: "ref", Train: materialise(d.Prepared.train), Val: materialise(d.Prepared.val)}}
			if mode == ModeBucket {
				c := d.Config
				if ref.Train, ref.Val, err = corpusDatasets(ref.Corpus, c.EffectiveMaxLen(), c.TooLong); err != nil {
					t.Fatal(err)
				}
				ref.Buckets = d.Buckets
				if ref.Train.src != nil || d.Train.src == nil {
					t.Fatal("reference dataset reads a source, or the prepared one does not")
				}
			}
			const dp = 2
			for rank := 0; rank < dp; rank++ {
				a, b := newSampler(t, d, rank, dp), newSampler(t, ref, rank, dp)
				for step := 0; step < 40; step++ {
					x, err1 := a.Next()
					y, err2 := b.Next()
					if err1 != nil || err2 != nil {
						t.Fatal(err1, err2)
					}
					if !batchEqual(x, y) {
						t.Fatalf("seed %d %s rank %d step %d: batches differ", seed, mode, rank, step)
					}
					if err := x.Validate(vocab); err != nil {
						t.Fatal(err)
					}
				}
				if a.State() != b.State() {
					t.Fatalf("%s: states %v vs %v", mode, a.State(), b.State())
				}
			}
			va, err1 := d.ValBatches(3)
			vb, err2 := ref.ValBatches(3)
			if err1 != nil || err2 != nil || len(va) != len(vb) {
				t.Fatal(err1, err2)
			}
			for i := range va {
				if !batchEqual(va[i], vb[i]) {
					t.Fatalf("%s: validation batch %d differs", mode, i)
				}
			}
			d.Close()
		}
	}
}

// A window batch over prepared data is a run of the training blocks' tokens
// (naive reference: the training blocks concatenated in memory).
func TestPreparedWindowRows(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	docs := randomDocs(r, 100, 500, 256)
	dir := preparedDocs(t, docs, 256)
	p, err := OpenPrepared(dir, ModeWindow, 0.1, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	stream := tokensOf(p.train)
	s, err := newWindowSampler(p.train, 64, 4, 9, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	for step := 0; step < 50; step++ {
		b, _ := s.Next()
		for row := 0; row < b.B; row++ {
			toks := b.Tokens[row*b.T : (row+1)*b.T]
			found := false
			for start := 0; start+b.T < len(stream) && !found; start++ {
				found = slices.Equal(stream[start:start+b.T], toks) && stream[start+b.T] == b.Targets[row*b.T+b.T-1]
			}
			if !found {
				t.Fatalf("step %d row %d is not a window of the training blocks", step, row)
			}
		}
	}
}

// Resume is exact: for every mode, a sampler restored from the state after
// k steps continues with the uninterrupted sampler's batches, bit for bit,
// across epoch ends, from a freshly opened dataset.
func TestPreparedResume(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	dir := preparedDocs(t, randomDocs(r, 80, 120, 256), 256)
	for _, mode := range []string{ModeWindow, ModePack, ModeBucket} {
		cfg := DefaultConfig()
		cfg.Path, cfg.Mode, cfg.SeqLen, cfg.BatchSize, cfg.Buckets = dir, mode, 16, 4, 4
		open := func() (*Data, Sampler) {
			d, err := Open(cfg, 11)
			if err != nil {
				t.Fatal(err)
			}
			return d, newSampler(t, d, 1, 2)
		}
		d, full := open()
		var want []Batch
		var states []State
		for i := 0; i < 300; i++ { // several epochs of pack and bucket
			states = append(states, full.State())
			b, err := full.Next()
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, b)
		}
		d.Close()
		for _, k := range []int{0, 1, 37, 150, 299} {
			d, s := open()
			if err := s.Restore(states[k]); err != nil {
				t.Fatal(err)
			}
			for i := k; i < len(want); i++ {
				b, err := s.Next()
				if err != nil {
					t.Fatal(err)
				}
				if !batchEqual(b, want[i]) {
					t.Fatalf("%s: resumed at %d, batch %d differs", mode, k, i)
				}
			}
			d.Close()
		}
	}
}

func TestPreparedErrors(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	dir := preparedDocs(t, randomDocs(r, 10, 50, 256), 256)
	cfg := DefaultConfig()
	cfg.Path, cfg.InputField, cfg.OutputField, cfg.Mode = dir, "in", "out", ModeBucket
	if _, err := Open(cfg, 1); err == nil {
		t.Error("two-length fields on a prepared dataset accepted")
	}
	if !IsPrepared(dir) || IsPrepared(t.TempDir()) || IsPrepared("") {
		t.Error("IsPrepared wrong")
	}
	// a damaged index is an error naming the file, not a panic
	os.WriteFile(filepath.Join(dir, tokshard.IndexFile), []byte("MTTOKIDX garbage"), 0o644)
	cfg = DefaultConfig()
	cfg.Path = dir
	if _, err := Open(cfg, 1); err == nil {
		t.Error("damaged index accepted")
	}
}

// Length statistics (data-stats) read a prepared dataset's lengths through
// the index; the in-memory loader refuses it rather than reading shards as
// text.
func TestPreparedStatsAndLoadCorpus(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	docs := randomDocs(r, 50, 300, 256)
	dir := preparedDocs(t, docs, 256)
	cfg := DefaultConfig()
	cfg.Path, cfg.SeqLen = dir, 64
	all, err := LoadAllExamples(cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	want, err := NewDataset("ref", materialise(memDocs(func() []Document {
		var out []Document
		for _, d := range docs {
			out = append(out, Document{Tokens: d})
		}
		return out
	}())), 64, TooLongSplit)
	if err != nil {
		t.Fatal(err)
	}
	if got, w := all.Tokens(), want.Tokens(); got != w || all.NumExamples() != want.NumExamples() {
		t.Fatalf("prepared statistics: %d positions in %d examples, want %d in %d", got, all.NumExamples(), w, want.NumExamples())
	}
	if _, err := LoadCorpus(dir, 0.05, 1); err == nil {
		t.Error("LoadCorpus read a prepared dataset as text")
	}
}
