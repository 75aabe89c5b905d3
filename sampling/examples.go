package sampling

import (
	"fmt"
	"math"
	"math/bits"
	"sort"
)

// examplesOf is the number of examples a document of n tokens gives at
// maxLen positions: none below 2 tokens, one when it fits or is truncated,
// else ceil((n-1)/maxLen) pieces (see NewDataset).
func examplesOf(n, maxLen int, split bool) int {
	switch {
	case n < 2:
		return 0
	case !split:
		return 1
	}
	return (n - 2 + maxLen) / maxLen
}

// pieceOf is the k-th example of a document of n tokens: its first token off
// and its positions l (it holds tokens [off, off+l+1)).
func pieceOf(n, k, maxLen int) (off, l int) {
	off = k * maxLen
	return off, min(maxLen, n-1-off)
}

// exampleIndex computes the examples of a source from its document lengths
// instead of storing them: example i is piece i-first[d] of the document d
// with first[d] <= i < first[d+1]. Lengths, which planning reads at random,
// take no search: full marks the examples of maxLen positions, and the others
// (at most one per document: the last piece, or a short document) have their
// length in short, found by counting the unmarked bits before them. Memory is
// 6 bytes per document plus about 1.5 bits per example.
type exampleIndex struct {
	src    docSource
	maxLen int
	split  bool
	first  []uint32 // first[d] = index of document d's first example; first[numDocs] = count
	full   []uint64 // bit i: example i has Len == maxLen
	rank   []uint32 // rank[w] = examples below 64w that are not full
	short  []uint16 // lengths of the examples that are not full, in order; nil when maxLen > 65535
}

func newExampleIndex(src docSource, maxLen int, split bool) (*exampleIndex, error) {
	nd := src.numDocs()
	x := &exampleIndex{src: src, maxLen: maxLen, split: split, first: make([]uint32, nd+1)}
	total := 0
	for d := 0; d < nd; d++ {
		total += examplesOf(src.docLen(d), maxLen, split)
		if total > math.MaxInt32 {
			return nil, fmt.Errorf("more than %d examples at max_len %d: too many for bucket mode (use window or pack mode, or a larger max_len)", math.MaxInt32, maxLen)
		}
		x.first[d+1] = uint32(total)
	}
	x.full = make([]uint64, (total+63)/64)
	x.rank = make([]uint32, len(x.full))
	if maxLen <= math.MaxUint16 {
		x.short = make([]uint16, 0, nd) // at most one per document
	}
	notFull := 0
	x.each(func(i int, e Example) {
		if i%64 == 0 {
			x.rank[i/64] = uint32(notFull)
		}
		if e.Len == maxLen {
			x.full[i/64] |= 1 << (i % 64)
			return
		}
		notFull++
		if x.short != nil {
			x.short = append(x.short, uint16(e.Len))
		}
	})
	return x, nil
}

func (x *exampleIndex) count() int { return int(x.first[len(x.first)-1]) }

// doc returns the document holding example i.
func (x *exampleIndex) doc(i int) int {
	// the last document whose first example is <= i (and that has one)
	return sort.Search(len(x.first)-1, func(d int) bool { return int(x.first[d+1]) > i })
}

func (x *exampleIndex) example(i int) Example {
	if i < 0 || i >= x.count() {
		panic(fmt.Sprintf("sampling: example %d out of range [0,%d)", i, x.count()))
	}
	d := x.doc(i)
	off, l := pieceOf(x.src.docLen(d), i-int(x.first[d]), x.maxLen)
	return Example{Doc: d, Off: off, Len: l}
}

func (x *exampleIndex) exLen(i int) int {
	w, b := i/64, uint(i%64)
	if x.full[w]&(1<<b) != 0 {
		return x.maxLen
	}
	if x.short == nil {
		return x.example(i).Len
	}
	below := uint64(1)<<b - 1
	return int(x.short[int(x.rank[w])+bits.OnesCount64(^x.full[w]&below)])
}

func (x *exampleIndex) each(f func(i int, e Example)) {
	i := 0
	for d := 0; d+1 < len(x.first); d++ {
		n := x.src.docLen(d)
		for k := range int(x.first[d+1] - x.first[d]) {
			off, l := pieceOf(n, k, x.maxLen)
			f(i, Example{Doc: d, Off: off, Len: l})
			i++
		}
	}
}
