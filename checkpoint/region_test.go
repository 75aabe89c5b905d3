package checkpoint

import (
	"math/rand/v2"
	"testing"
)

// naiveIndices lists the global row-major index of every element of r, in
// r's own buffer order.
func naiveIndices(shape []int64, r Region) []int64 {
	if r.Flat {
		out := make([]int64, r.Length)
		for i := range out {
			out[i] = r.Offset + int64(i)
		}
		return out
	}
	strides := make([]int64, len(shape))
	s := int64(1)
	for d := len(shape) - 1; d >= 0; d-- {
		strides[d] = s
		s *= shape[d]
	}
	var out []int64
	idx := make([]int64, len(shape))
	var rec func(d int, off int64)
	rec = func(d int, off int64) {
		if d == len(shape) {
			out = append(out, off)
			return
		}
		for i := int64(0); i < r.Count[d]; i++ {
			idx[d] = i
			rec(d+1, off+(r.Start[d]+i)*strides[d])
		}
	}
	rec(0, 0)
	return out
}

func randShape(rng *rand.Rand) []int64 {
	dims := []int64{1, 2, 3, 5, 7, 0, 4, 11}
	shape := make([]int64, rng.IntN(4))
	for i := range shape {
		shape[i] = dims[rng.IntN(len(dims))]
	}
	return shape
}

func randRegion(rng *rand.Rand, shape []int64) Region {
	total, _ := NumElements(shape)
	if rng.IntN(3) == 0 {
		off := rng.Int64N(total + 1)
		return FlatRange(off, rng.Int64N(total-off+1))
	}
	start := make([]int64, len(shape))
	count := make([]int64, len(shape))
	for d, s := range shape {
		if rng.IntN(2) == 0 {
			count[d] = s // whole dims exercise run merging
			continue
		}
		start[d] = rng.Int64N(s + 1)
		count[d] = rng.Int64N(s - start[d] + 1)
	}
	return Box(start, count)
}

func TestRunIterMatchesNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 3000; iter++ {
		shape := randShape(rng)
		r := randRegion(rng, shape)
		if err := r.Validate(shape); err != nil {
			t.Fatalf("random region %v of %v invalid: %v", r, shape, err)
		}
		want := naiveIndices(shape, r)
		var got []int64
		it := newRunIter(shape, r)
		for {
			off, n, pos, ok := it.next()
			if !ok {
				break
			}
			if pos != int64(len(got)) {
				t.Fatalf("shape %v region %v: run pos %d, want %d", shape, r, pos, len(got))
			}
			for i := int64(0); i < n; i++ {
				got = append(got, off+i)
			}
		}
		if len(got) != len(want) {
			t.Fatalf("shape %v region %v: %d indices, want %d", shape, r, len(got), len(want))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("shape %v region %v: index %d = %d, want %d", shape, r, i, got[i], want[i])
			}
		}
	}
}

func TestIntersectMatchesNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for iter := 0; iter < 3000; iter++ {
		shape := randShape(rng)
		a, b := randRegion(rng, shape), randRegion(rng, shape)
		posA := map[int64]int64{}
		for i, g := range naiveIndices(shape, a) {
			posA[g] = int64(i)
		}
		type pair struct{ a, b int64 }
		var want []pair
		for i, g := range naiveIndices(shape, b) {
			if p, ok := posA[g]; ok {
				want = append(want, pair{p, int64(i)})
			}
		}
		var got []pair
		intersect(shape, a, b, func(o overlap) bool {
			for i := int64(0); i < o.n; i++ {
				got = append(got, pair{o.a + i, o.b + i})
			}
			return true
		})
		// intersect yields global order; the naive list is in b's order,
		// which is global order too for both region kinds.
		if len(got) != len(want) {
			t.Fatalf("shape %v %v ∩ %v: %d common, want %d", shape, a, b, len(got), len(want))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("shape %v %v ∩ %v: pair %d = %v, want %v", shape, a, b, i, got[i], want[i])
			}
		}
		if n := overlapCount(shape, a, b); n != int64(len(want)) {
			t.Fatalf("shape %v overlapCount(%v, %v) = %d, want %d", shape, a, b, n, len(want))
		}
	}
}

func TestRegionValidate(t *testing.T) {
	shape := []int64{4, 6}
	for _, tc := range []struct {
		r  Region
		ok bool
	}{
		{Whole(shape), true},
		{DimRange(shape, 1, 3, 3), true},
		{DimRange(shape, 1, 4, 3), false},
		{Box([]int64{0}, []int64{4}), false},
		{FlatRange(20, 4), true},
		{FlatRange(20, 5), false},
		{FlatRange(-1, 1), false},
		{Region{Flat: true, Start: []int64{0}}, false},
		{Region{Start: []int64{0, 0}, Count: []int64{1, 1}, Length: 3}, false},
	} {
		if err := tc.r.Validate(shape); (err == nil) != tc.ok {
			t.Errorf("Validate(%v) = %v, want ok=%v", tc.r, err, tc.ok)
		}
	}
	if _, err := NumElements([]int64{1 << 30, 1 << 30, 2}); err == nil {
		t.Error("NumElements accepted 2^61 elements")
	}
}
