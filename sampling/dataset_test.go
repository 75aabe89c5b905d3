package sampling

import (
	"reflect"
	"slices"
	"testing"
)

func seqDoc(n int) Document {
	toks := make([]int32, n)
	for i := range toks {
		toks[i] = int32(i % 256)
	}
	return Document{Name: "seq", Tokens: toks}
}

// TestNewDatasetSplitTruncate: split pieces overlap by one token so every
// prediction survives exactly once; truncation keeps the first max_len
// positions; both are counted, and too-short documents are dropped.
func TestNewDatasetSplitTruncate(t *testing.T) {
	docs := []Document{seqDoc(11), seqDoc(5), seqDoc(1), seqDoc(4)}
	ds, err := NewDataset("s", docs, 4, TooLongSplit)
	if err != nil {
		t.Fatal(err)
	}
	if got := ds.Lengths(); !reflect.DeepEqual(got, []int{4, 4, 2, 4, 3}) {
		t.Fatalf("split lengths %v", got)
	}
	if ds.Split != 1 || ds.Dropped != 1 || ds.Truncated != 0 || ds.Tokens() != 10+4+3 {
		t.Fatalf("counts split %d dropped %d truncated %d tokens %d", ds.Split, ds.Dropped, ds.Truncated, ds.Tokens())
	}
	var preds [][2]int32
	for _, e := range ds.Examples[:3] {
		for j := 0; j < e.Len; j++ {
			preds = append(preds, [2]int32{e.Tokens[j], e.Tokens[j+1]})
		}
	}
	for j := 0; j < 10; j++ {
		if preds[j] != [2]int32{int32(j), int32(j + 1)} {
			t.Fatalf("predictions of the split document: %v", preds)
		}
	}
	tr, err := NewDataset("t", docs, 4, TooLongTruncate)
	if err != nil {
		t.Fatal(err)
	}
	if got := tr.Lengths(); !reflect.DeepEqual(got, []int{4, 4, 3}) || tr.Truncated != 1 || !slices.Equal(tr.Examples[0].Tokens, []int32{0, 1, 2, 3, 4}) {
		t.Fatalf("truncate lengths %v truncated %d", got, tr.Truncated)
	}
	if _, err := NewDataset("x", []Document{seqDoc(1)}, 4, TooLongSplit); err == nil {
		t.Fatal("dataset of one-token documents accepted")
	}
	if _, err := NewDataset("x", docs, 4, "drop"); err == nil {
		t.Fatal("bad too_long accepted")
	}
}

func TestStats(t *testing.T) {
	ds := lenDataset(10, 10, 20, 40, 40, 5)
	n := NaiveStats(ds, 80, 0, 1) // 2 examples per batch
	if n.Batches != 3 || n.Examples != 6 || n.Real != 125 || n.MeanExamples() != 2 {
		t.Fatalf("naive %+v", n)
	}
	if n.Slots < n.Real || n.Padding() < 0 {
		t.Fatalf("naive slots %d real %d", n.Slots, n.Real)
	}
	pk := PackStats(ds, 40, 2) // 125 positions: one batch of 80, one of 45 (2 rows of 23)
	if pk.Batches != 2 || pk.Real != 125 || pk.Slots != 80+46 {
		t.Fatalf("pack %+v", pk)
	}
	// PackStats agrees with what PackSampler produces with one rank.
	var docs []Document
	for _, e := range ds.Examples {
		docs = append(docs, Document{Tokens: e.Tokens})
	}
	s, _ := NewPackSampler(docs, 40, 2, 1, 0, 1)
	var slots, real int64
	for i := 0; i < s.StepsPerEpoch(); i++ {
		x, _ := s.Next()
		slots += int64(x.B * x.T)
		real += int64(x.RealTokens())
	}
	if s.StepsPerEpoch() != pk.Batches || slots != pk.Slots || real != pk.Real {
		t.Fatalf("pack sampler: %d batches %d slots %d real; PackStats %+v", s.StepsPerEpoch(), slots, real, pk)
	}
	h := LengthHistogram(ds, 4) // width 10
	if !reflect.DeepEqual(h.Counts, []int{3, 1, 0, 2}) || h.Tokens[3] != 80 {
		t.Fatalf("histogram %+v", h)
	}
	b := Batch{B: 2, T: 2, Targets: []int32{1, -1, -1, -1}}
	if b.PaddingFraction() != 0.75 {
		t.Fatalf("padding fraction %v", b.PaddingFraction())
	}
}
