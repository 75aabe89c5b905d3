package sampling

import (
	"testing"

	"github.com/BurntSushi/toml"
)

// TestConfigTOML: every documented key decodes into its field, and unset keys
// keep DefaultConfig's values.
func TestConfigTOML(t *testing.T) {
	doc := `
path = "d.jsonl"
val_fraction = 0.1
text_field = "body"
input_field = "q"
output_field = "a"
mode = "bucket"
seq_len = 128
batch_size = 4
max_len = 1024
too_long = "truncate"
budget = 8192
buckets = 32
buckets2 = 3
quadratic_q = 512.0
max_examples = 64
bucket_batch_file = "bb.txt"
boundary_sample = 500
seed_offset = 7
`
	c := DefaultConfig()
	md, err := toml.Decode(doc, &c)
	if err != nil {
		t.Fatal(err)
	}
	if u := md.Undecoded(); len(u) != 0 {
		t.Fatalf("keys without a field: %v", u)
	}
	want := Config{Path: "d.jsonl", ValFraction: 0.1, TextField: "body", InputField: "q", OutputField: "a", Mode: ModeBucket,
		SeqLen: 128, BatchSize: 4, MaxLen: 1024, TooLong: TooLongTruncate, Budget: 8192, Buckets: 32, Buckets2: 3,
		QuadraticQ: 512, MaxExamples: 64, BucketBatchFile: "bb.txt", BoundarySample: 500, SeedOffset: 7}
	if c != want {
		t.Fatalf("decoded %+v\nwant    %+v", c, want)
	}
	c = DefaultConfig()
	if _, err := toml.Decode(`mode = "pack"`, &c); err != nil {
		t.Fatal(err)
	}
	d := DefaultConfig()
	d.Mode = ModePack
	if c != d {
		t.Fatalf("partial section lost defaults: %+v", c)
	}
}
