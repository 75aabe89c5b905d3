package checkpoint

import (
	"fmt"
	"math"
	"strings"
	"testing"
)

// testdata/format-v1 is a checkpoint written by the writer before direct
// I/O and the timed compression probe (the buffered writer of format
// version 1, with AlwaysCompress so that it holds raw, plane-coded and zstd
// chunks, and NoShuffle for rank 1), with flat and box pieces and blobs.
// Files written before must load unchanged: this reads every byte and
// compares every value with the formula that generated it.
func TestOldCheckpointLoads(t *testing.T) {
	c, err := OpenDir("testdata/format-v1/step-000007", OpenOptions{Verify: VerifyFull})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	val := func(kind, i int) float32 {
		switch kind {
		case 0:
			return float32(i%7) * 0.5
		case 1:
			return float32(math.Sin(float64(i)*0.37)) * 1e-3
		default:
			return float32(math.Cos(float64(i)*1.3)*0.02) + 1e-4
		}
	}
	codecs := map[uint8]int{}
	for _, r := range c.shards {
		for _, e := range r.idx.Entries {
			for _, ch := range e.Chunks {
				codecs[ch.Codec]++
			}
		}
	}
	if codecs[codecRaw] == 0 || codecs[codecZstd] == 0 || codecs[codecPlanes] == 0 {
		t.Fatalf("chunks per codec %v: the file should hold all three", codecs)
	}
	for k, name := range []string{"model.w", "optim.m.w", "optim.v.w"} {
		got, shape, err := c.ReadTensor(name)
		if err != nil {
			t.Fatal(err)
		}
		if len(shape) != 1 || shape[0] != 12000 {
			t.Fatalf("%s: shape %v, want [12000]", name, shape)
		}
		for i, v := range got {
			if v != val(k, i) {
				t.Fatalf("%s[%d] = %v, want %v", name, i, v, val(k, i))
			}
		}
	}
	emb, shape, err := c.ReadTensor("model.emb")
	if err != nil {
		t.Fatal(err)
	}
	if len(shape) != 2 || shape[0] != 8 || shape[1] != 300 {
		t.Fatalf("model.emb: shape %v, want [8 300]", shape)
	}
	for i, v := range emb {
		if v != val(2, i) {
			t.Fatalf("model.emb[%d] = %v, want %v", i, v, val(2, i))
		}
	}
	for r := 0; r < 2; r++ {
		b, err := c.Blob(r, BlobOptimizer)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf(`{"rank":%d,"pad":"%s"}`, r, strings.Repeat("a", 120))
		if string(b) != want {
			t.Fatalf("rank %d blob %q, want %q", r, b, want)
		}
	}
}
