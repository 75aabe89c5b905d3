package checkpoint

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestReshardTrainerLayouts walks the layouts the trainer uses: expert
// weights [E, hidden, d] split over EP (dim 0) and TP (dim 1), and a ZeRO-1
// optimizer moment stored as uneven flat ranges of one flat buffer. They are
// read back under other degrees: EP=4, TP=3, DP=2 flat ranges and per-entry
// ranges of the flat buffer.
func TestReshardTrainerLayouts(t *testing.T) {
	rng := rand.New(rand.NewPCG(41, 42))
	w1 := newTestTensor(rng, "model.layers.0.w1", 4, 6, 5)
	flat := newTestTensor(rng, "optim.m.flat", 97)
	s := newTestStore(t, 0)
	m := &Manifest{Version: ManifestVersion, Step: 7, Mesh: map[string]int{"dp": 2, "ep": 2, "tp": 2}}
	// Writer: 4 ranks = EP 2 × TP 2 for w1; ZeRO-1 over the same 4 ranks.
	zero := []int64{0, 30, 31, 80, 97}
	for r := 0; r < 4; r++ {
		ep, tp := int64(r/2), int64(r%2)
		l := testLayout{
			w1.name:   {Box([]int64{ep * 2, tp * 3, 0}, []int64{2, 3, 5})},
			flat.name: {FlatRange(zero[r], zero[r+1]-zero[r])},
		}
		m.Shards = append(m.Shards, closedShard(t, s, 7, r, WriterOptions{ChunkBytes: 24}, rankPieces([]testTensor{w1, flat}, l, 0)))
	}
	c := commitOpen(t, s, m, "latest")
	check := func(name string, tt testTensor, r Region) {
		t.Helper()
		dst := make([]float32, r.Len())
		if err := c.ReadRegion(tt.name, r, dst); err != nil {
			t.Fatalf("%s %v: %v", name, r, err)
		}
		if !slices.Equal(dst, tt.extract(r)) {
			t.Fatalf("%s %v: wrong values", name, r)
		}
	}
	for e := int64(0); e < 4; e++ {
		check("EP=4", w1, DimRange(w1.shape, 0, e, 1))
	}
	for k := int64(0); k < 3; k++ {
		check("TP=3", w1, DimRange(w1.shape, 1, 2*k, 2))
	}
	for e := int64(0); e < 4; e++ {
		for k := int64(0); k < 2; k++ {
			check("EP=4×TP=2", w1, Box([]int64{e, 3 * k, 0}, []int64{1, 3, 5}))
		}
	}
	check("flat view of a box-split tensor", w1, FlatRange(17, 71))
	check("DP=2 ZeRO-1", flat, FlatRange(0, 49))
	check("DP=2 ZeRO-1", flat, FlatRange(49, 48))
	check("one entry of the flat buffer as a box", flat, Box([]int64{29}, []int64{3}))
}
