package sampling

import (
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		mut  func(*Config)
		want string
	}{
		{func(c *Config) { c.Mode = "shuffle" }, "data.mode = \"shuffle\""},
		{func(c *Config) { c.SeqLen = 0 }, "data.seq_len = 0"},
		{func(c *Config) { c.BatchSize = -1 }, "data.batch_size = -1"},
		{func(c *Config) { c.ValFraction = 1 }, "data.val_fraction = 1"},
		{func(c *Config) { c.TooLong = "drop" }, "data.too_long = \"drop\""},
		{func(c *Config) { c.Buckets = 0 }, "data.buckets = 0"},
		{func(c *Config) { c.QuadraticQ = -1 }, "data.quadratic_q = -1"},
		{func(c *Config) { c.MaxExamples = -2 }, "data.max_examples = -2"},
		{func(c *Config) { c.InputField = "q" }, "set both or neither"},
		{func(c *Config) { c.InputField, c.OutputField = "q", "a" }, "needs mode \"bucket\""},
		{func(c *Config) { c.BucketBatchFile = filepath.Join(dir, "nope") }, "data.bucket_batch_file"},
		{func(c *Config) { c.Mode, c.MaxLen, c.Budget = ModeBucket, 1024, 512 }, "cannot hold one example of max_len 1024"},
		{func(c *Config) { c.Mode, c.MaxLen, c.Budget, c.QuadraticQ = ModeBucket, 1024, 1500, 1024 }, "cost 2048"},
	} {
		c := DefaultConfig()
		tc.mut(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v, want it to contain %q", err, tc.want)
		}
	}
	var c Config // WithDefaults fills optional fields only; seq_len and batch_size stay required
	if err := c.WithDefaults().Validate(); err == nil {
		t.Error("zero seq_len accepted")
	}
}

// TestOpenModes: every mode builds samplers whose batches validate; ranks
// with the same dpRank (TP/SP ranks of one replica) get identical batches;
// validation batches are deterministic.
func TestOpenModes(t *testing.T) {
	dir := t.TempDir()
	for _, mode := range []string{ModeWindow, ModeBucket, ModePack} {
		c := DefaultConfig()
		c.Mode, c.SeqLen, c.BatchSize = mode, 128, 4
		d, err := Open(c, 3)
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		s1, err := d.Sampler(1, 2)
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		s1b, _ := d.Sampler(1, 2)
		s0, _ := d.Sampler(0, 2)
		for i := 0; i < 5; i++ {
			x, err := s1.Next()
			if err != nil {
				t.Fatal(err)
			}
			y, _ := s1b.Next()
			z, _ := s0.Next()
			if err := x.Validate(Vocab); err != nil {
				t.Fatalf("%s: %v", mode, err)
			}
			if !reflect.DeepEqual(x, y) {
				t.Fatalf("%s: same dp rank, different batches", mode)
			}
			if reflect.DeepEqual(x, z) {
				t.Fatalf("%s: dp ranks 0 and 1 got the same batch", mode)
			}
			if x.B*x.T > 128*4 {
				t.Fatalf("%s: batch %dx%d over the budget", mode, x.B, x.T)
			}
			if (x.Seg != nil) != (mode == ModePack) {
				t.Fatalf("%s: Seg set = %v", mode, x.Seg != nil)
			}
		}
		if s1.State() != s0.State() {
			t.Fatalf("%s: ranks' states differ", mode)
		}
		v1, err := d.ValBatches(3)
		if err != nil || len(v1) == 0 {
			t.Fatalf("%s: validation batches: %v", mode, err)
		}
		v2, _ := d.ValBatches(3)
		if !reflect.DeepEqual(v1, v2) {
			t.Fatalf("%s: validation batches not deterministic", mode)
		}
	}
	c := DefaultConfig()
	c.Mode = "bad"
	if _, err := Open(c, 1); err == nil {
		t.Fatal("bad mode opened")
	}
	c = DefaultConfig()
	c.Path = filepath.Join(dir, "missing.jsonl")
	if _, err := Open(c, 1); err == nil || !strings.Contains(err.Error(), "missing.jsonl") {
		t.Fatalf("missing data: %v", err)
	}
	c.Path, c.ValFraction = SyntheticLogNormal, 0
	d, err := Open(c, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.ValBatches(1); err == nil {
		t.Fatal("validation batches without held-out data")
	}
	var joined interface{ Unwrap() []error }
	c = DefaultConfig()
	c.SeqLen, c.Buckets = 0, 0
	if err := c.Validate(); !errors.As(err, &joined) || len(joined.Unwrap()) != 2 {
		t.Fatalf("want both errors reported: %v", err)
	}
}

func TestTwoLengthOpen(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "p.jsonl")
	var b strings.Builder
	r := rng{s: 4}
	for i := 0; i < 300; i++ {
		b.WriteString(`{"q":"` + strings.Repeat("q", 1+r.intn(100)) + `","a":"` + strings.Repeat("a", 1+r.intn(60)) + `"}` + "\n")
	}
	writeFile(t, file, b.String())
	c := DefaultConfig()
	c.Path, c.Mode, c.InputField, c.OutputField, c.MaxLen, c.Budget, c.Buckets = file, ModeBucket, "q", "a", 128, 1024, 8
	d, err := Open(c, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Train.TwoD || d.Buckets.Upper2 == nil {
		t.Fatal("two-length data not detected")
	}
	s, _ := d.Sampler(0, 1)
	bt, err := s.Next()
	if err != nil {
		t.Fatal(err)
	}
	for i, tg := range bt.Targets {
		if tg >= 0 && tg != 'a' {
			t.Fatalf("target %q at %d: only output tokens may be predicted", tg, i)
		}
	}
	all, err := LoadAllExamples(c, 1)
	if err != nil || len(all.Examples) != 300 {
		t.Fatalf("all examples: %v", err)
	}
}
