package sampling

import (
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

func randomConfig(vocab, seqLen, batch int) Config {
	c := DefaultConfig()
	c.Mode, c.Vocab, c.SeqLen, c.BatchSize = ModeRandom, vocab, seqLen, batch
	return c
}

// TestRandomSampler: batches are window-shaped, ids are in range, every
// target is the next input of its row, streams are deterministic per
// (seed, dp rank) and independent across ranks, and a restored state
// continues exactly under any DP size.
func TestRandomSampler(t *testing.T) {
	const vocab, seqLen, batch = 1000, 64, 4
	s, err := NewRandomSampler(vocab, seqLen, batch, 7, 0, 2)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := NewRandomSampler(vocab, seqLen, batch, 7, 0, 2)
	s1, _ := NewRandomSampler(vocab, seqLen, batch, 7, 1, 2)
	other, _ := NewRandomSampler(vocab, seqLen, batch, 8, 0, 2)
	r, _ := NewRandomSampler(vocab, seqLen, batch, 7, 0, 3) // a different DP size restores too
	back := checkDrawAndResume(t, s, r, vocab, 10, 4, func(step int, b Batch) {
		if b.B != batch || b.T != seqLen || b.Seg != nil || b.RealTokens() != batch*seqLen {
			t.Fatalf("batch %dx%d, seg %v, %d real tokens", b.B, b.T, b.Seg != nil, b.RealTokens())
		}
		for i, p := range b.Pos {
			if int(p) != i%seqLen {
				t.Fatalf("Pos[%d] = %d", i, p)
			}
		}
		for r := 0; r < b.B; r++ {
			row := r * seqLen
			for j := 0; j+1 < seqLen; j++ {
				if b.Targets[row+j] != b.Tokens[row+j+1] {
					t.Fatalf("step %d row %d pos %d: target %d, next input %d", step, r, j, b.Targets[row+j], b.Tokens[row+j+1])
				}
			}
		}
		if r0, r1 := b.Tokens[:seqLen], b.Tokens[seqLen:2*seqLen]; slices.Equal(r0, r1) {
			t.Fatal("rows 0 and 1 are equal")
		}
		b2, _ := again.Next()
		if !batchEqual(b, b2) {
			t.Fatal("same seed and rank, different batches")
		}
		b1, _ := s1.Next()
		if slices.Equal(b.Tokens, b1.Tokens) {
			t.Fatal("dp ranks 0 and 1 got the same batch")
		}
		bo, _ := other.Next()
		if slices.Equal(b.Tokens, bo.Tokens) {
			t.Fatal("seeds 7 and 8 gave the same batch")
		}
	})
	if back.Kind != ModeRandom || back.Step != 4 {
		t.Fatalf("state %v", back)
	}
	if err := r.Restore(State{Kind: ModeWindow, Seed: 7}); err == nil {
		t.Error("restored a window state into a random sampler")
	}
	if err := r.Restore(State{Kind: ModeRandom, Seed: 8}); err == nil {
		t.Error("restored a state of another seed")
	}
	// A far-away step restores in O(1) and equals the stream at that step.
	far, _ := NewRandomSampler(vocab, seqLen, batch, 7, 0, 2)
	if err := far.Restore(State{Kind: ModeRandom, Seed: 7, Step: 1 << 40}); err != nil {
		t.Fatal(err)
	}
	x, _ := far.Next()
	y, _ := far.Next()
	if far.State().Step != 1<<40+2 || batchEqual(x, y) {
		t.Fatal("far restore did not advance step by step")
	}
}

// TestRandomSamplerSmallVocab: vocab 1 gives all zeros; vocab 2 gives both ids.
func TestRandomSamplerSmallVocab(t *testing.T) {
	s, _ := NewRandomSampler(1, 16, 2, 1, 0, 1)
	b, _ := s.Next()
	for i := range b.Tokens {
		if b.Tokens[i] != 0 || b.Targets[i] != 0 {
			t.Fatal("vocab 1 drew a nonzero id")
		}
	}
	s, _ = NewRandomSampler(2, 64, 2, 1, 0, 1)
	b, _ = s.Next()
	if !slices.Contains(b.Tokens, 0) || !slices.Contains(b.Tokens, 1) {
		t.Fatalf("vocab 2 did not draw both ids: %v", b.Tokens)
	}
}

// TestRandomUniform: a chi-square statistic of 2²⁰ draws over 64 ids (and
// first-order pairs over 16×16) is within a loose bound of its degrees of
// freedom; a biased or stuck generator lands far outside.
func TestRandomUniform(t *testing.T) {
	chi2 := func(counts []int, n int) float64 {
		exp := float64(n) / float64(len(counts))
		x := 0.0
		for _, c := range counts {
			d := float64(c) - exp
			x += d * d / exp
		}
		return x
	}
	const vocab = 64
	s, _ := NewRandomSampler(vocab, 1024, 8, 3, 0, 1)
	counts := make([]int, vocab)
	pairs := make([]int, 16*16)
	n, np := 0, 0
	for range 128 {
		b, _ := s.Next()
		for i, tok := range b.Tokens {
			counts[tok]++
			n++
			if tgt := b.Targets[i]; tok < 16 && tgt < 16 {
				pairs[int(tok)*16+int(tgt)]++
				np++
			}
		}
	}
	// df = 63 (sd ≈ 11) and 255 (sd ≈ 23): bounds about 6 sd out.
	if x := chi2(counts, n); x > 63+6*math.Sqrt(2*63) {
		t.Errorf("ids: chi-square %.1f with 63 degrees of freedom", x)
	}
	if x := chi2(pairs, np); x > 255+6*math.Sqrt(2*255) {
		t.Errorf("pairs: chi-square %.1f with 255 degrees of freedom", x)
	}
	// A large vocabulary reaches its top ids too (no truncation to 16 bits).
	s, _ = NewRandomSampler(1<<20, 2048, 8, 3, 0, 1)
	b, _ := s.Next()
	if m := slices.Max(b.Tokens); m < 1<<19 {
		t.Errorf("max id %d of 16384 draws from [0, 2^20)", m)
	}
}

func TestRandomSamplerErrors(t *testing.T) {
	for _, tc := range []struct{ vocab, seq, batch, rank, size int }{
		{0, 4, 1, 0, 1}, {-1, 4, 1, 0, 1}, {MaxRandomVocab + 1, 4, 1, 0, 1},
		{10, 0, 1, 0, 1}, {10, 4, 0, 0, 1}, {10, 4, 1, 1, 1}, {10, 4, 1, -1, 2}, {10, 4, 1, 0, 0},
	} {
		if _, err := NewRandomSampler(tc.vocab, tc.seq, tc.batch, 1, tc.rank, tc.size); err == nil {
			t.Errorf("%+v: no error", tc)
		}
	}
	if _, err := RandomFixedBatches(0, 4, 1, 1, 1); err == nil {
		t.Error("fixed batches with vocab 0")
	}
	if _, err := RandomFixedBatches(10, 4, 1, -1, 1); err == nil {
		t.Error("fixed batches with count -1")
	}
}

// TestRandomConfig: mode random needs a vocab (other modes ignore it), the
// key decodes from TOML, and Open builds random samplers and validation
// batches without loading a corpus.
func TestRandomConfig(t *testing.T) {
	for _, tc := range []struct {
		mut  func(*Config)
		want string
	}{
		{func(c *Config) { c.Vocab = 0 }, "data.vocab = 0"},
		{func(c *Config) { c.Vocab = -3 }, "data.vocab = -3"},
		{func(c *Config) { c.Vocab = MaxRandomVocab + 1 }, "data.vocab = 2147483648"},
		{func(c *Config) { c.SeqLen = 0 }, "data.seq_len = 0"},
		{func(c *Config) { c.InputField, c.OutputField = "q", "a" }, "needs mode \"bucket\""},
	} {
		c := randomConfig(100, 32, 2)
		tc.mut(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v, want it to contain %q", err, tc.want)
		}
		if err != nil && strings.Contains(tc.want, "vocab") && !strings.Contains(err.Error(), "data.mode") {
			t.Errorf("vocab error %q does not name data.mode", err)
		}
	}
	for _, mode := range []string{ModeWindow, ModeBucket, ModePack} {
		c := DefaultConfig()
		c.Mode, c.Vocab = mode, -5
		if err := c.Validate(); err != nil {
			t.Errorf("mode %s does not ignore data.vocab: %v", mode, err)
		}
	}
	if !randomConfig(1, 1, 1).FixedShape() || !DefaultConfig().FixedShape() {
		t.Error("window and random batches are fixed-shape")
	}
	var c Config
	if _, err := toml.Decode("mode = \"random\"\nvocab = 32768\n", &c); err != nil || c.Mode != ModeRandom || c.Vocab != 32768 {
		t.Fatalf("decoded %+v, %v", c, err)
	}

	c = randomConfig(32768, 128, 4)
	c.Path = "/nonexistent/never-read.txt" // random mode loads no corpus
	d, err := Open(c, 3)
	if err != nil {
		t.Fatal(err)
	}
	if d.Corpus != nil || d.Train != nil {
		t.Fatal("random mode loaded data")
	}
	s0, s0b, s1 := newSampler(t, d, 0, 2), newSampler(t, d, 0, 2), newSampler(t, d, 1, 2)
	x, _ := s0.Next()
	y, _ := s0b.Next()
	z, _ := s1.Next()
	if err := x.Validate(32768); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(x, y) || reflect.DeepEqual(x, z) {
		t.Fatal("same dp rank must give the same batch, another rank another")
	}
	direct, _ := NewRandomSampler(32768, 128, 4, 3+c.SeedOffset, 0, 2)
	if w, _ := direct.Next(); !batchEqual(w, x) {
		t.Fatal("Open's sampler is not NewRandomSampler at the job seed")
	}
	v1, err := d.ValBatches(3)
	if err != nil || len(v1) != 3 {
		t.Fatalf("validation batches: %d, %v", len(v1), err)
	}
	v2, _ := d.ValBatches(3)
	if !reflect.DeepEqual(v1, v2) {
		t.Fatal("validation batches not deterministic")
	}
	for i, v := range v1 {
		if err := v.Validate(32768); err != nil {
			t.Fatal(err)
		}
		if batchEqual(v, x) {
			t.Fatalf("validation batch %d equals the first training batch", i)
		}
	}
	c.Vocab = 0
	if _, err := Open(c, 3); err == nil || !strings.Contains(err.Error(), "data.vocab = 0") {
		t.Fatalf("open with vocab 0: %v", err)
	}
}

// TestRandomSpeed: an 8×2048 batch takes well under a millisecond (the
// bound is loose for shared, slow CI machines: the benchmark measures).
func BenchmarkNextRandom(b *testing.B) {
	s, _ := NewRandomSampler(32768, 2048, 8, 1, 0, 1)
	tokens := 0
	for b.Loop() {
		x, _ := s.Next()
		tokens += x.B * x.T
	}
	b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "slots/s")
}

// FuzzRandomConfig: any random-mode config either validates and opens into
// samplers whose batches validate against its vocab, or fails validation.
func FuzzRandomConfig(f *testing.F) {
	f.Add(32768, 2048, 8, uint64(1))
	f.Add(0, 4, 1, uint64(0))
	f.Add(-1, 4, 1, uint64(0))
	f.Add(1, 1, 1, uint64(1<<63))
	f.Add(MaxRandomVocab, 3, 2, uint64(5))
	f.Fuzz(func(t *testing.T, vocab, seqLen, batch int, seed uint64) {
		if seqLen > 4096 || batch > 64 {
			t.Skip("too large for a fuzz iteration")
		}
		c := randomConfig(vocab, seqLen, batch)
		verr := c.Validate()
		d, err := Open(c, seed)
		if (verr == nil) != (err == nil) {
			t.Fatalf("Validate %v but Open %v", verr, err)
		}
		if err != nil {
			if !strings.Contains(err.Error(), "data.") {
				t.Fatalf("error does not name a key: %v", err)
			}
			return
		}
		b, err := newSampler(t, d, 0, 1).Next()
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Validate(vocab); err != nil {
			t.Fatal(err)
		}
		if _, err := d.ValBatches(1); err != nil {
			t.Fatal(err)
		}
	})
}
