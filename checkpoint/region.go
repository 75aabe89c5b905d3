package checkpoint

import (
	"errors"
	"fmt"
)

// MaxRank bounds the number of dimensions of a stored tensor. Decoders reject
// more so that untrusted shapes cannot drive large allocations.
const MaxRank = 8

// MaxElements bounds the element count of one stored tensor (2^40 float32 =
// 4 TiB); it keeps every offset computation far from int64 overflow.
const MaxElements = int64(1) << 40

// Region selects part of a tensor of a given global shape, in one of two forms:
//
//   - a box (Flat == false): Start[d] and Count[d] per dimension d, the
//     hyper-rectangle a tensor/expert-parallel split produces (one or more
//     dimensions cut into ranges); its elements are stored in row-major order
//     of the box;
//   - a flat range (Flat == true): elements [Offset, Offset+Length) of the
//     row-major flattening of the global tensor, the piece a ZeRO-1 shard of a
//     flat buffer produces.
//
// The zero Region with Flat == false and nil Start/Count is not valid for a
// tensor of rank > 0; use Whole, Box, DimRange or FlatRange.
type Region struct {
	Flat   bool    `json:"flat,omitempty"`
	Start  []int64 `json:"start,omitempty"`
	Count  []int64 `json:"count,omitempty"`
	Offset int64   `json:"offset,omitempty"`
	Length int64   `json:"length,omitempty"`
}

// Whole is the box covering every element of shape.
func Whole(shape []int64) Region {
	return Region{Start: make([]int64, len(shape)), Count: append([]int64(nil), shape...)}
}

// Box is the hyper-rectangle start[d] ≤ i_d < start[d]+count[d].
func Box(start, count []int64) Region {
	return Region{Start: append([]int64(nil), start...), Count: append([]int64(nil), count...)}
}

// DimRange is the box of shape cut along dim to [start, start+count); every
// other dimension is whole (a tensor-parallel or expert-parallel slice).
func DimRange(shape []int64, dim int, start, count int64) Region {
	r := Whole(shape)
	if dim >= 0 && dim < len(shape) {
		r.Start[dim], r.Count[dim] = start, count
	}
	return r
}

// FlatRange is elements [offset, offset+length) of the row-major flattening.
func FlatRange(offset, length int64) Region {
	return Region{Flat: true, Offset: offset, Length: length}
}

// NumElements returns the number of elements of shape, or an error when a
// dimension is negative, the rank exceeds MaxRank or the product exceeds
// MaxElements.
func NumElements(shape []int64) (int64, error) {
	if len(shape) > MaxRank {
		return 0, fmt.Errorf("rank %d exceeds %d", len(shape), MaxRank)
	}
	n := int64(1)
	for d, s := range shape {
		if s < 0 {
			return 0, fmt.Errorf("dimension %d is negative (%d)", d, s)
		}
		if s != 0 && n > MaxElements/s {
			return 0, fmt.Errorf("shape %v exceeds %d elements", shape, MaxElements)
		}
		n *= s
	}
	return n, nil
}

// Validate checks that r lies inside a tensor of the given shape.
func (r Region) Validate(shape []int64) error {
	total, err := NumElements(shape)
	if err != nil {
		return err
	}
	if r.Flat {
		if len(r.Start) != 0 || len(r.Count) != 0 {
			return errors.New("flat region has start/count")
		}
		if r.Offset < 0 || r.Length < 0 || r.Offset > total || r.Length > total-r.Offset {
			return fmt.Errorf("flat range [%d, +%d) outside %d elements", r.Offset, r.Length, total)
		}
		return nil
	}
	if r.Offset != 0 || r.Length != 0 {
		return errors.New("box region has offset/length")
	}
	if len(r.Start) != len(shape) || len(r.Count) != len(shape) {
		return fmt.Errorf("box has %d starts and %d counts for rank %d", len(r.Start), len(r.Count), len(shape))
	}
	for d := range shape {
		if r.Start[d] < 0 || r.Count[d] < 0 || r.Start[d] > shape[d] || r.Count[d] > shape[d]-r.Start[d] {
			return fmt.Errorf("dimension %d: [%d, +%d) outside size %d", d, r.Start[d], r.Count[d], shape[d])
		}
	}
	return nil
}

// Len is the number of elements of r; r must be valid for some shape.
func (r Region) Len() int64 {
	if r.Flat {
		return r.Length
	}
	n := int64(1)
	for _, c := range r.Count {
		n *= c
	}
	return n
}

// Equal reports whether r and o select the same elements in the same form.
func (r Region) Equal(o Region) bool {
	if r.Flat != o.Flat || r.Offset != o.Offset || r.Length != o.Length || len(r.Start) != len(o.Start) || len(r.Count) != len(o.Count) {
		return false
	}
	for i := range r.Start {
		if r.Start[i] != o.Start[i] {
			return false
		}
	}
	for i := range r.Count {
		if r.Count[i] != o.Count[i] {
			return false
		}
	}
	return true
}

func (r Region) String() string {
	if r.Flat {
		return fmt.Sprintf("flat[%d:%d]", r.Offset, r.Offset+r.Length)
	}
	s := "box["
	for d := range r.Start {
		if d > 0 {
			s += ","
		}
		s += fmt.Sprintf("%d:%d", r.Start[d], r.Start[d]+r.Count[d])
	}
	return s + "]"
}

// runIter walks a valid region of shape as maximal runs of consecutive global
// (row-major) element indices, in increasing order; pos is the index of the
// run's first element inside the region's own dense row-major buffer.
type runIter struct {
	done     bool
	flatOff  int64
	flatLen  int64
	flat     bool
	outer    []int64 // odometer over the dims before the run dim
	start    []int64
	count    []int64
	strides  []int64
	runLen   int64
	runDim   int
	pos      int64
	consumed bool
}

func newRunIter(shape []int64, r Region) *runIter {
	it := &runIter{}
	if r.Len() == 0 {
		it.done = true
		return it
	}
	if r.Flat {
		it.flat, it.flatOff, it.flatLen = true, r.Offset, r.Length
		return it
	}
	n := len(shape)
	it.strides = make([]int64, n)
	s := int64(1)
	for d := n - 1; d >= 0; d-- {
		it.strides[d] = s
		s *= shape[d]
	}
	// The run covers dims runDim.. where every dim after runDim is whole.
	k := n - 1
	for k > 0 && r.Start[k] == 0 && r.Count[k] == shape[k] {
		k--
	}
	if n == 0 {
		it.flat, it.flatOff, it.flatLen = true, 0, 1
		return it
	}
	it.runDim = k
	it.runLen = r.Count[k] * it.strides[k]
	it.start, it.count = r.Start, r.Count
	it.outer = make([]int64, k)
	return it
}

// next returns the next run (global offset, length, position in region).
func (it *runIter) next() (off, n, pos int64, ok bool) {
	if it.done {
		return 0, 0, 0, false
	}
	if it.flat {
		it.done = true
		return it.flatOff, it.flatLen, 0, true
	}
	off = it.start[it.runDim] * it.strides[it.runDim]
	for d, i := range it.outer {
		off += (it.start[d] + i) * it.strides[d]
	}
	pos = it.pos
	it.pos += it.runLen
	d := len(it.outer) - 1
	for ; d >= 0; d-- {
		it.outer[d]++
		if it.outer[d] < it.count[d] {
			break
		}
		it.outer[d] = 0
	}
	if d < 0 {
		it.done = true
	}
	return off, it.runLen, pos, true
}

// overlap is one maximal common run of two regions: n elements starting at
// position a in the first region's buffer and b in the second's.
type overlap struct{ a, b, n int64 }

// intersect calls fn for each common run of regions ra and rb of the same
// shape, in increasing global order (so a and b both increase). fn returning
// false stops the walk.
func intersect(shape []int64, ra, rb Region, fn func(overlap) bool) {
	ia, ib := newRunIter(shape, ra), newRunIter(shape, rb)
	aOff, aN, aPos, aok := ia.next()
	bOff, bN, bPos, bok := ib.next()
	for aok && bok {
		lo := max(aOff, bOff)
		hi := min(aOff+aN, bOff+bN)
		if lo < hi {
			if !fn(overlap{a: aPos + lo - aOff, b: bPos + lo - bOff, n: hi - lo}) {
				return
			}
		}
		if aOff+aN <= bOff+bN {
			aOff, aN, aPos, aok = ia.next()
		} else {
			bOff, bN, bPos, bok = ib.next()
		}
	}
}

// overlapCount returns how many elements regions a and b share.
func overlapCount(shape []int64, a, b Region) int64 {
	if !a.Flat && !b.Flat {
		n := int64(1)
		for d := range shape {
			lo := max(a.Start[d], b.Start[d])
			hi := min(a.Start[d]+a.Count[d], b.Start[d]+b.Count[d])
			if hi <= lo {
				return 0
			}
			n *= hi - lo
		}
		if len(shape) == 0 {
			return min(a.Len(), b.Len())
		}
		return n
	}
	if a.Flat && b.Flat {
		return max(0, min(a.Offset+a.Length, b.Offset+b.Length)-max(a.Offset, b.Offset))
	}
	var total int64
	intersect(shape, a, b, func(o overlap) bool { total += o.n; return true })
	return total
}
