package sampling

import (
	"reflect"
	"testing"
)

func testDocs(n int, seed uint64) []Document {
	r := rng{s: seed}
	docs := make([]Document, n)
	for i := range docs {
		l := 1 + r.intn(300)
		if r.intn(10) == 0 {
			l += r.intn(3000)
		}
		toks := make([]int32, l)
		for j := range toks {
			toks[j] = int32(r.intn(256))
		}
		docs[i] = Document{Name: "doc", Tokens: toks}
	}
	return docs
}

func TestWindowSampler(t *testing.T) {
	docs := testDocs(50, 1)
	stream := concat(docs)
	s, err := NewWindowSampler(docs, 64, 4, 7, 0, 2)
	if err != nil {
		t.Fatal(err)
	}
	s1, _ := NewWindowSampler(docs, 64, 4, 7, 1, 2)
	r, _ := NewWindowSampler(docs, 64, 4, 7, 0, 3) // a different DP size restores too
	checkDrawAndResume(t, s, r, Vocab, 10, 4, func(step int, b Batch) {
		if b.RealTokens() != 4*64 {
			t.Fatalf("window batch has %d real tokens", b.RealTokens())
		}
		// every row is a window of the stream with targets shifted by one
		for r := 0; r < b.B; r++ {
			row := b.Tokens[r*64 : (r+1)*64]
			found := false
			for st := 0; st+65 <= len(stream) && !found; st++ {
				if reflect.DeepEqual(stream[st:st+64], row) && stream[st+64] == b.Targets[r*64+63] {
					found = true
				}
			}
			if !found {
				t.Fatalf("step %d row %d is not a window of the documents", step, r)
			}
		}
		b1, _ := s1.Next()
		if reflect.DeepEqual(b.Tokens, b1.Tokens) {
			t.Fatal("dp ranks 0 and 1 got the same batch")
		}
	})
	if err := r.Restore(State{Kind: "bucket", Seed: 7}); err == nil {
		t.Error("restored a bucket state into a window sampler")
	}
	if err := r.Restore(State{Kind: "window", Seed: 8}); err == nil {
		t.Error("restored a state of another seed")
	}
}

func TestWindowSamplerErrors(t *testing.T) {
	docs := []Document{{Tokens: make([]int32, 10)}}
	for _, tc := range []struct{ seq, batch, rank, size int }{{10, 1, 0, 1}, {0, 1, 0, 1}, {4, 0, 0, 1}, {4, 1, 1, 1}, {4, 1, -1, 2}} {
		if _, err := NewWindowSampler(docs, tc.seq, tc.batch, 1, tc.rank, tc.size); err == nil {
			t.Errorf("%+v: no error", tc)
		}
	}
	if _, err := NewWindowSampler(docs, 9, 1, 1, 0, 1); err != nil {
		t.Errorf("exactly seq_len+1 tokens: %v", err)
	}
}

func TestFixedBatches(t *testing.T) {
	docs := testDocs(3, 2)
	a := FixedBatches(docs, 128, 3, 5, 11)
	b := FixedBatches(docs, 128, 3, 5, 11)
	c := FixedBatches(docs, 128, 3, 5, 12)
	if len(a) != 5 || !reflect.DeepEqual(a, b) {
		t.Fatal("same seed gave different validation batches")
	}
	if reflect.DeepEqual(a, c) {
		t.Fatal("different seeds gave the same validation batches")
	}
	for _, x := range a {
		if err := x.Validate(Vocab); err != nil {
			t.Fatal(err)
		}
	}
	tiny := []Document{{Tokens: []int32{1, 2, 3}}}
	if got := FixedBatches(tiny, 16, 2, 1, 1); len(got) != 1 || got[0].RealTokens() != 32 {
		t.Fatal("wrap-around windows of a tiny corpus failed")
	}
	if FixedBatches([]Document{{Tokens: []int32{1}}}, 16, 2, 1, 1) != nil {
		t.Fatal("one-token corpus gave batches")
	}
}

func TestBatchValidate(t *testing.T) {
	ok := newBatch(2, 3, true)
	if err := ok.Validate(Vocab); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Batch){
		"short tokens": func(b *Batch) { b.Tokens = b.Tokens[:5] },
		"token range":  func(b *Batch) { b.Tokens[1] = 256 },
		"target range": func(b *Batch) { b.Targets[0] = -2 },
		"pos range":    func(b *Batch) { b.Pos[2] = 3 },
		"seg len":      func(b *Batch) { b.Seg = b.Seg[:1] },
		"seg range":    func(b *Batch) { b.Seg[0] = -5 },
		"zero B":       func(b *Batch) { b.B = 0 },
	} {
		b := newBatch(2, 3, true)
		mut(&b)
		if err := b.Validate(Vocab); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
